"""``nfbench export``: a saved detector's inference module as TorchScript or ONNX, checked.

The exported module is the detector's ``inference_module()`` (the one profiling measures):
images ``float [B, 3, S, S]`` in [0, 1] in, ``(image scores [B], anomaly map [B, S, S])`` out,
with the backbone inside. CFlow-AD and CLS-CNFs export their inductive form (the training-set
maxima normalise the map; ``score`` defaults to the transductive one over the scored set).

Every export is checked: the exported file is loaded back and run on a check batch (the
first images of ``--images``, else seeded uniform noise) other than the batch it was traced
on, and each output must match the original module within ``|a - b| <= atol + rtol * |b|``
(default atol 1e-4, rtol 1e-4: float32 kernels in another order, not another computation).
The result (and the largest differences) goes to ``export.json`` beside the file; a failed
check removes the file and ends in one clear error.

ONNX (measured with torch 2.14's TorchScript-based exporter, opset 17, onnxruntime's CPU
provider): Gaussian and CS-Flow export and match; CFlow-AD, CLS-CNFs and PatchFlow export, but
onnxruntime cannot run the files (``NOT_IMPLEMENTED: Resize``): their anomaly maps are
upsampled bilinearly in float64 (the suite keeps map arithmetic in double precision so the
metrics do not move), and onnxruntime's CPU Resize kernel has no float64 implementation. The
export then ends in one clear error instead of an unchecked file; TorchScript covers them.

ONNX needs the ``export`` extra (``pip install nfbench[export]``: onnx, onnxscript and
onnxruntime for the check).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from nfbench.errors import UserError

FORMATS = ("torchscript", "onnx")
ATOL, RTOL = 1e-4, 1e-4
SUFFIX = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}


def _batches(size: int, images: Path | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(trace batch, check batch): seeded noise, or the first images of ``images``."""
    if images is not None:
        from nfbench.predict import image_files, image_set

        files = image_files(images)[: 2 * batch]
        loaded = image_set(files, size, "export").load_images()
        half = max(1, len(loaded) // 2)
        return loaded[:half], loaded[half:] if len(loaded) > 1 else loaded
    generator = torch.Generator().manual_seed(0)
    return (torch.rand(batch, 3, size, size, generator=generator),
            torch.rand(batch, 3, size, size, generator=generator))


def _outputs(result) -> list[torch.Tensor]:
    return [t.detach().float().cpu() for t in (result if isinstance(result, (tuple, list))
                                               else [result])]


def compare(exported: list[torch.Tensor], reference: list[torch.Tensor], atol: float,
            rtol: float) -> dict[str, Any]:
    """Largest absolute difference per output and whether all are within tolerance."""
    if len(exported) != len(reference):
        return {"ok": False, "reason": f"{len(exported)} outputs, expected {len(reference)}"}
    worst, ok = [], True
    for a, b in zip(exported, reference):
        a = a.reshape(b.shape) if a.numel() == b.numel() else a
        if a.shape != b.shape:
            return {"ok": False, "reason": f"output shape {tuple(a.shape)} != {tuple(b.shape)}"}
        diff = (a - b).abs()
        worst.append(float(diff.max()) if diff.numel() else 0.0)
        ok &= bool((diff <= atol + rtol * b.abs()).all())
    return {"ok": ok, "max_abs_diff": worst}


def _torchscript(module: torch.nn.Module, trace: torch.Tensor, path: Path):
    with torch.no_grad():
        traced = torch.jit.trace(module, trace, check_trace=False)
    traced.save(str(path))
    loaded = torch.jit.load(str(path), map_location="cpu")
    return lambda x: _outputs(loaded(x))


def _onnx(module: torch.nn.Module, trace: torch.Tensor, path: Path):
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise UserError("ONNX export needs onnx and onnxruntime: pip install "
                        "'nfbench[export]'") from None
    try:
        with torch.no_grad():
            torch.onnx.export(module, (trace,), str(path), input_names=["image"],
                              output_names=["image_score", "anomaly_map"],
                              dynamic_axes={"image": {0: "batch"}}, opset_version=17,
                              dynamo=False)
    except Exception as exc:  # the exporter's own message names the unsupported op
        raise UserError(f"ONNX cannot export this model: {str(exc).splitlines()[0]}") from None
    def run(x: torch.Tensor) -> list[torch.Tensor]:
        try:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            return [torch.from_numpy(o).float() for o in session.run(None, {"image": x.numpy()})]
        except Exception as exc:  # e.g. NOT_IMPLEMENTED: Resize on float64 (see the docstring)
            raise UserError(f"the ONNX file was written but onnxruntime cannot run it, so it "
                            f"cannot be checked: {str(exc).splitlines()[0]}") from None

    return run


def export_model(model: Path | str, fmt: str, out: Path | str | None = None, *,
                 images: Path | None = None, batch: int = 2, atol: float = ATOL,
                 rtol: float = RTOL) -> dict[str, Any]:
    """Export the inference module of the model saved in ``model`` to ``fmt`` (one of
    :data:`FORMATS`) at ``out`` (default: inside the model folder) and check it (module
    docstring). Returns the check's report (also written to ``<out>.json``)."""
    from nfbench.artifacts import load_detector

    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    detector = load_detector(model, device="cpu")
    manifest = detector.artifact_
    size = int(manifest["config"]["input_size"])
    out = Path(out) if out is not None else Path(model) / f"model{SUFFIX[fmt]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    module = detector.inference_module().eval()
    trace, check = _batches(size, images, batch)
    with torch.no_grad():
        reference = _outputs(module(check))
    try:
        run = (_torchscript if fmt == "torchscript" else _onnx)(module, trace, out)
        with torch.no_grad():
            result = compare(run(check), reference, atol, rtol)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    report = {"model": str(model), "method": manifest["method"], "format": fmt,
              "file": str(out), "input": [None, 3, size, size],
              "outputs": ["image_score [B]", "anomaly_map [B, S, S]"],
              "check_batch": "images" if images is not None else "seeded uniform noise",
              "tolerance": {"atol": atol, "rtol": rtol}, **result}
    if not result["ok"]:
        out.unlink(missing_ok=True)
        raise UserError(f"the {fmt} export of {manifest['method']} differs from the original "
                        f"beyond atol {atol:g}, rtol {rtol:g}: "
                        f"{result.get('reason') or result['max_abs_diff']}")
    Path(str(out) + ".json").write_text(json.dumps(report, indent=2) + "\n")
    return report
