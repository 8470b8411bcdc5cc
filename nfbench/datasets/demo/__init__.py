"""Offline demo dataset: images bundled with scikit-image plus synthetic defects.

Why: the benchmark must run end to end without downloading MVTec AD, and the scores it
produces must still tell a working method from a broken one. The normal images are crops of
two real textures (``brick``, ``gravel``) and two objects on a plain plate, a real ancient
``coin`` (the largest one of ``skimage.data.coins()``) and a printed disc (``logo``, the
scikit-image logo), jittered in position, rotation and illumination. (``grass``, in version 1,
was dropped: its photograph is too irregular for a 60-image normal model, every method sat
near chance on it.)

Test defects are MVTec AD's kinds, per category (:data:`CATEGORY_DEFECTS`): scratches, cracks,
stray threads, holes/pits, stains and foreign contamination on the textures and coin; broken-off
(missing) and misplaced (turned) parts on the objects. They are sized to be visible at the
feature resolutions the methods use (stride 8-32 at 128-256 px): each covers about 1-10 % of
the image (:data:`AREA_RANGE`), with a range of sizes and contrasts so that image AUROC is not
trivially 1.0. Defect shapes are geometric (curves, blobs, polygons), deliberately *not* the
Perlin-noise masks that some methods use for their own synthetic training anomalies.

Layout written by :func:`generate_demo` is exactly MVTec AD's:
``<root>/<cat>/train/good/000.png``, ``<root>/<cat>/test/{good,<defect>}/000.png`` and
``<root>/<cat>/ground_truth/<defect>/000_mask.png`` (0/255, same size as the image), plus
``<root>/demo.json`` describing the parameters and counts.

Modules: :mod:`.categories` (the categories and their defect kinds), :mod:`.images` (normal
images), :mod:`.defects` (defects and their masks), :mod:`.generator` (the set on disk).
"""
