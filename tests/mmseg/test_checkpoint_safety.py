"""Weights-only checkpoint loading (ann_seg.utils.checkpoint) with real mmengine checkpoints.

A toy model is trained by mmengine's Runner (iter- and epoch-based loops, val loop with numpy
metrics, save_best, schedulers, default hooks) and its checkpoints are loaded, resumed and
attacked. Every test runs with both load paths: torch's allowlist (torch >= 2.5) and the
restricted unpickler torch < 2.5 gets (forced on a recent torch, with the newer API hidden).
"""

import copy
import io
import os
import pickle
import re
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from mmengine.runner import checkpoint as mm_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader
from torch import nn
from torch.utils.data import Dataset

from ann_seg.layers import compat
from ann_seg.mmseg import checkpoint as ckpt_mod
from ann_seg.mmseg.checkpoint import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    install_mmengine_checkpoint_loader,
    load_from_http_safe,
    load_from_local_safe,
    mmengine_safe_globals,
    safe_load_checkpoint,
)

PALETTE = np.array([[0, 0, 0], [255, 0, 0]], dtype=np.uint8)
NATIVE_AT_IMPORT = ckpt_mod.USE_TORCH_SAFE_GLOBALS  # the path chosen by feature detection
GET_SAFE_GLOBALS = getattr(torch.serialization, "get_safe_globals", None)
NEW_SERIALIZATION_API = ("safe_globals", "get_safe_globals", "get_unsafe_globals_in_checkpoint")


@pytest.fixture(autouse=True, params=["torch_safe_globals", "restricted_unpickler"])
def loader_path(request, monkeypatch):
    """Runs each test with torch's allowlist API, and with the restricted unpickler as on
    torch < 2.5: there the newer torch.serialization API is hidden, so it cannot be used."""
    if request.param == "torch_safe_globals":
        if not compat.HAS_SAFE_GLOBALS:
            pytest.skip(f"torch {torch.__version__} has no torch.serialization.safe_globals")
        monkeypatch.setattr(ckpt_mod, "USE_TORCH_SAFE_GLOBALS", True)
    else:
        monkeypatch.setattr(ckpt_mod, "USE_TORCH_SAFE_GLOBALS", False)
        monkeypatch.setattr(ckpt_mod, "HAS_SAFE_GLOBALS", False)
        for name in NEW_SERIALIZATION_API:
            monkeypatch.delattr(torch.serialization, name, raising=False)
    return request.param


def torch_allowlist():
    """torch's process-wide allowlist for weights-only loads (None before torch 2.4)."""
    return None if GET_SAFE_GLOBALS is None else set(GET_SAFE_GLOBALS())


class ToyDataset(Dataset):
    """Sixteen 4-d points, two classes; metainfo carries numpy values like a seg data set."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.data = torch.randn(16, 4, generator=gen)
        self.label = (self.data.sum(1) > 0).long()

    @property
    def metainfo(self):
        return {
            "classes": ("background", "foreground"),
            "palette": PALETTE.copy(),
            "ignore_index": np.int64(255),
            "reduce_zero_label": False,
        }

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return {"inputs": self.data[i], "data_samples": self.label[i]}


class ToyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, inputs, data_samples=None, mode="tensor"):
        out = self.bn(self.fc(inputs))
        if mode == "loss":
            return {"loss": nn.functional.cross_entropy(out, data_samples)}
        if mode == "predict":
            return list(zip(out.argmax(1), data_samples))
        return out


class ToyMetric(BaseMetric):
    default_prefix = "toy"

    def process(self, data_batch, data_samples):
        self.results.extend(float(p == y) for p, y in data_samples)

    def compute_metrics(self, results):
        return {"acc": np.round(np.float64(np.mean(results)) * 100, 2), "n": np.int64(len(results))}


class RecordStartIter(Hook):
    """Records where the train loop starts, i.e. after a resume."""

    def before_train(self, runner):
        runner.start_iter_seen = runner.iter
        runner.start_epoch_seen = runner.epoch


LOOPS = {
    "iter": {
        "train_cfg": {"type": "IterBasedTrainLoop", "max_iters": 4, "val_interval": 2},
        "optim_wrapper": {"optimizer": {"type": "AdamW", "lr": 1e-3, "weight_decay": 0.01}},
        "param_scheduler": [
            {"type": "LinearLR", "start_factor": 0.1, "by_epoch": False, "begin": 0, "end": 2},
            {"type": "OneCycleLR", "eta_max": 1e-3, "total_steps": 8, "by_epoch": False},
        ],
    },
    "epoch": {
        "train_cfg": {"type": "EpochBasedTrainLoop", "max_epochs": 2, "val_interval": 1},
        "optim_wrapper": {"optimizer": {"type": "SGD", "lr": 0.01, "momentum": 0.9}},
        "param_scheduler": [
            {"type": "MultiStepLR", "milestones": [1], "by_epoch": True},
            {"type": "PolyLR", "power": 0.9, "eta_min": 1e-4, "by_epoch": True, "begin": 1},
        ],
    },
}


def make_runner(work_dir, loop, name, longer=False, **kwargs):
    cfg = copy.deepcopy(LOOPS[loop])
    by_epoch = loop == "epoch"
    if longer:  # one more checkpoint interval than the run that is resumed
        cfg["train_cfg"]["max_epochs" if by_epoch else "max_iters"] *= 2

    def loader():
        return {
            "dataset": ToyDataset(),
            "sampler": {"type": "DefaultSampler", "shuffle": True},
            "batch_size": 4,
            "num_workers": 0,
            "collate_fn": {"type": "default_collate"},
        }

    return Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=loader(),
        val_dataloader=loader(),
        val_cfg={},
        val_evaluator=[ToyMetric()],
        default_hooks={
            "checkpoint": {
                "type": "CheckpointHook",
                "interval": 1 if by_epoch else 2,
                "by_epoch": by_epoch,
                "save_best": "toy/acc",
                "rule": "greater",
            },
            "logger": {"type": "LoggerHook", "interval": 1},
        },
        custom_hooks=[RecordStartIter()],
        log_processor={"by_epoch": by_epoch},
        randomness={"seed": 0},
        log_level="WARNING",
        **cfg,
        **kwargs,
    )


@pytest.fixture(scope="module", params=sorted(LOOPS))
def trained(request, tmp_path_factory):
    """(loop kind, path of the last checkpoint, iteration stored in it) of a finished run."""
    loop = request.param
    work_dir = tmp_path_factory.mktemp(f"train_{loop}")
    runner = make_runner(work_dir, loop, f"ckpt_safety_train_{loop}")
    runner.train()
    last = "epoch_2.pth" if loop == "epoch" else "iter_4.pth"
    path = os.path.join(str(work_dir), last)
    assert os.path.isfile(path)
    return loop, path, runner.iter


# --------------------------------------------------------------------------- legitimate files


def test_path_is_chosen_by_feature_detection():
    assert compat.HAS_SAFE_GLOBALS == (compat.TORCH_VERSION >= (2, 5))
    assert NATIVE_AT_IMPORT is compat.HAS_SAFE_GLOBALS


def test_plain_torch_load_refuses_mmengine_checkpoints(trained):
    """Proves the problem: torch's weights-only load (the default since torch 2.6) and hence
    mmengine's own loader (a bare torch.load) fail."""
    _, path, _ = trained
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(path, map_location="cpu", weights_only=True)
    if compat.TORCH_VERSION < (2, 6):
        return  # there mmengine's bare torch.load unpickles anything (hence our loaders)
    original = mm_checkpoint.load_from_local  # mmengine's bare torch.load loader
    CheckpointLoader.register_scheme(prefixes="", loader=original, force=True)
    try:
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            load_checkpoint(ToyModel(), path, map_location="cpu")
    finally:
        install_mmengine_checkpoint_loader()


def test_safe_load_checkpoint_contents(trained):
    _, path, it = trained
    allowlist_before = torch_allowlist()
    ckpt = safe_load_checkpoint(path)
    assert {"meta", "state_dict", "message_hub", "optimizer", "param_schedulers"} <= set(ckpt)
    assert ckpt["meta"]["iter"] == it
    np.testing.assert_array_equal(ckpt["meta"]["dataset_meta"]["palette"], PALETTE)
    assert ckpt["meta"]["dataset_meta"]["palette"].dtype == np.uint8
    assert isinstance(ckpt["message_hub"]["log_scalars"]["train/loss"], HistoryBuffer)
    assert isinstance(ckpt["message_hub"]["runtime_info"]["best_score"], np.floating)
    assert isinstance(ckpt["state_dict"]["fc.weight"], torch.Tensor)
    assert ckpt["optimizer"]["state"] and ckpt["param_schedulers"]
    # The allowlist is scoped to our load: torch.load is not widened afterwards.
    assert torch_allowlist() == allowlist_before
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu", weights_only=True)


def test_both_paths_load_the_same(trained, loader_path):
    """The restricted unpickler rebuilds exactly what torch's allowlisted load rebuilds."""
    if loader_path != "torch_safe_globals":
        pytest.skip("compares the restricted unpickler with torch's allowlist API")
    _, path, _ = trained
    module = ckpt_mod._restricted_pickle_module()
    restricted = torch.load(path, map_location="cpu", weights_only=False, pickle_module=module)
    assert_same(safe_load_checkpoint(path), restricted)


def assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert a.dtype == b.dtype and a.requires_grad == b.requires_grad
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    elif isinstance(a, HistoryBuffer):
        assert_same(a.__dict__, b.__dict__)
    else:
        assert a == b or (a != a and b != b), (a, b)  # NaN


def test_legacy_format_checkpoints(trained, tmp_path):
    """Files written with ``_use_new_zipfile_serialization=False`` load and are checked too."""
    _, path, it = trained
    legacy = str(tmp_path / "legacy.pth")
    torch.save(safe_load_checkpoint(path), legacy, _use_new_zipfile_serialization=False)
    ckpt = safe_load_checkpoint(legacy)
    assert ckpt["meta"]["iter"] == it
    assert isinstance(ckpt["message_hub"]["log_scalars"]["train/loss"], HistoryBuffer)
    marker = tmp_path / "marker_legacy"
    evil = str(tmp_path / "evil_legacy.pth")
    torch.save({"meta": {"x": SystemPayload(marker)}}, evil, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError) as excinfo:
        safe_load_checkpoint(evil)
    check_refusal(excinfo, evil, SYSTEM_GLOBAL, marker)


def test_mmengine_safe_globals_needs_the_torch_api(trained):
    _, path, it = trained
    if not ckpt_mod.HAS_SAFE_GLOBALS:
        with pytest.raises(RuntimeError, match=re.escape(f"torch {torch.__version__} has none")):
            with mmengine_safe_globals():
                pass
        return
    with mmengine_safe_globals():
        assert torch.load(path, map_location="cpu", weights_only=True)["meta"]["iter"] == it


def test_file_objects_and_missing_files(trained, tmp_path):
    _, path, it = trained
    with open(path, "rb") as file:
        assert safe_load_checkpoint(io.BytesIO(file.read()))["meta"]["iter"] == it
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        safe_load_checkpoint(tmp_path / "nope.pth")


def test_loader_is_installed_and_idempotent():
    install_mmengine_checkpoint_loader()
    install_mmengine_checkpoint_loader()
    assert CheckpointLoader._get_checkpoint_loader("/some/ckpt.pth") is load_from_local_safe
    assert CheckpointLoader._get_checkpoint_loader("https://x/y.pth") is load_from_http_safe
    assert list(CheckpointLoader._schemes.values()).count(load_from_local_safe) == 1


def test_mmengine_load_checkpoint_into_model(trained):
    _, path, _ = trained
    model = ToyModel()
    load_checkpoint(model, path, map_location="cpu", strict=True)
    saved = safe_load_checkpoint(path)["state_dict"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key])


def test_runner_resume_continues_from_saved_iteration(trained, tmp_path):
    loop, path, it = trained
    runner = make_runner(
        tmp_path, loop, f"ckpt_safety_resume_{loop}", longer=True, load_from=path, resume=True
    )
    runner.train()
    assert runner.start_iter_seen == it
    if loop == "epoch":
        assert runner.start_epoch_seen == 2
        assert runner.epoch == 4
    assert runner.iter == 2 * it
    assert os.path.isfile(tmp_path / ("epoch_4.pth" if loop == "epoch" else "iter_8.pth"))


def rewrite_pickle(path, edit):
    """A copy (BytesIO) of the zip checkpoint at ``path`` with ``data.pkl`` replaced by
    ``edit(data.pkl)``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buffer, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                data = edit(data)
            dst.writestr(info.filename, data)
    buffer.seek(0)
    return buffer


def test_checkpoint_from_numpy1_loads(trained):
    """numpy 1.x pickles arrays as ``numpy.core.multiarray.*``, numpy 2.x as ``numpy._core``."""
    _, path, it = trained
    names = (b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")

    def swap(data):
        new, old = names if names[1] in data else names[::-1]
        assert old in data and new not in data
        return data.replace(old, new)

    ckpt = safe_load_checkpoint(rewrite_pickle(path, swap))
    assert ckpt["meta"]["iter"] == it
    np.testing.assert_array_equal(ckpt["meta"]["dataset_meta"]["palette"], PALETTE)


# --------------------------------------------------------------------------- malicious files


def write_marker(path):
    with open(path, "w") as file:
        file.write("pwned")


class SystemPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class FunctionPayload(SystemPayload):
    def __reduce__(self):
        return write_marker, (str(self.marker),)


class ExecPayload(SystemPayload):
    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


SYSTEM_GLOBAL = f"{os.system.__module__}.system"  # posix.system / nt.system
PAYLOADS = {
    "os.system": (SystemPayload, SYSTEM_GLOBAL),
    "function": (FunctionPayload, "write_marker"),
    "exec": (ExecPayload, "builtins.exec"),
}


def save_evil(path, payload):
    """A checkpoint that looks like mmengine's (resumable) with a payload hidden in meta."""
    meta = {"epoch": 0, "iter": 2, "payload": payload}
    torch.save({"meta": meta, "state_dict": ToyModel().state_dict(), "message_hub": {}}, path)
    return str(path)


@pytest.fixture(params=sorted(PAYLOADS))
def evil(request, tmp_path):
    cls, global_name = PAYLOADS[request.param]
    marker = tmp_path / f"marker_{request.param}"
    # The payload is live: plain pickle would run it.
    pickle.loads(pickle.dumps(cls(marker)))
    assert marker.exists()
    marker.unlink()
    return save_evil(tmp_path / "evil.pth", cls(marker)), marker, global_name


def check_refusal(excinfo, path, global_name, marker):
    message = str(excinfo.value)
    assert path in message
    assert global_name in message
    assert "outside the allowlist" in message
    assert "weights_only=False" not in message
    assert not marker.exists()


def test_malicious_checkpoint_refused_by_safe_load(evil):
    path, marker, global_name = evil
    with pytest.raises(UnsafeCheckpointError) as excinfo:
        safe_load_checkpoint(path)
    check_refusal(excinfo, path, global_name, marker)
    assert isinstance(excinfo.value, RuntimeError)


def test_malicious_checkpoint_refused_by_mmengine_load_checkpoint(evil):
    path, marker, global_name = evil
    with pytest.raises(UnsafeCheckpointError) as excinfo:
        load_checkpoint(ToyModel(), path, map_location="cpu")
    check_refusal(excinfo, path, global_name, marker)


def test_malicious_checkpoint_refused_by_runner_resume(tmp_path):
    marker = tmp_path / "marker_resume"
    path = save_evil(tmp_path / "evil.pth", SystemPayload(marker))
    runner = make_runner(tmp_path / "work", "iter", "ckpt_safety_evil", load_from=path, resume=True)
    with pytest.raises(UnsafeCheckpointError) as excinfo:
        runner.train()
    check_refusal(excinfo, path, SYSTEM_GLOBAL, marker)


class GetattrPayload:
    def __reduce__(self):
        return getattr, (np.ndarray, "tofile")


class HistoryBufferPayload:
    def __reduce__(self):
        return HistoryBuffer, (), {"statistics_methods": {"mean": np.dtype}}


class ObjectArrayPayload:
    def __reduce__(self):
        return np.array([1, None], dtype=object).__reduce__()


@pytest.mark.parametrize(
    "payload, global_name",
    [
        (GetattrPayload(), "builtins.getattr(ndarray, 'tofile')"),
        (HistoryBufferPayload(), "HistoryBuffer.statistics_methods['mean']"),
        (ObjectArrayPayload(), "numpy.dtypes.ObjectDType"),
    ],
)
def test_allowlisted_names_cannot_be_abused(tmp_path, payload, global_name):
    """Restricted getattr, HistoryBuffer class state and object arrays stay closed."""
    path = str(tmp_path / "abuse.pth")
    torch.save({"state_dict": {}, "x": payload}, path)
    with pytest.raises(UnsafeCheckpointError) as excinfo:
        safe_load_checkpoint(path)
    assert global_name in str(excinfo.value)
    assert HistoryBuffer._statistics_methods.get("mean", HistoryBuffer.mean) is HistoryBuffer.mean


def binunicode(text):
    data = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def test_allowlisted_classes_cannot_be_modified(tmp_path):
    """BUILD on an allowlisted class itself (not an instance) would set class attributes."""
    path = str(tmp_path / "plain.pth")
    torch.save({"state_dict": {}}, path)
    data = b"".join(
        [
            pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.MARK,
            binunicode("state_dict") + pickle.EMPTY_DICT + binunicode("x"),
            pickle.GLOBAL + b"mmengine.logging.history_buffer\nHistoryBuffer\n",
            pickle.NONE + pickle.EMPTY_DICT + binunicode("mean"),
            pickle.GLOBAL + b"builtins\nset\n" + pickle.SETITEM + pickle.TUPLE2,
            pickle.BUILD + pickle.SETITEMS + pickle.STOP,
        ]
    )
    with pytest.raises(UnsafeCheckpointError, match="builtins.type"):
        safe_load_checkpoint(rewrite_pickle(path, lambda _: data))
    assert HistoryBuffer.mean is not set and callable(HistoryBuffer.__dict__["mean"])


def test_refused_globals_are_never_imported(tmp_path, monkeypatch):
    """Naming a module that is not imported yet does not import (i.e. run) it."""
    marker = tmp_path / "marker_import"
    module = "ann_seg_import_probe"
    (tmp_path / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = save_evil(tmp_path / "evil.pth", FunctionPayload(tmp_path / "unused"))
    own = FunctionPayload.__module__.encode()

    def rename(data):
        assert b"c" + own + b"\nwrite_marker\n" in data
        return data.replace(b"c" + own + b"\n", b"c" + module.encode() + b"\n")

    with pytest.raises(UnsafeCheckpointError, match=re.escape(f"{module}.write_marker")):
        safe_load_checkpoint(rewrite_pickle(path, rename))
    assert module not in sys.modules
    assert not marker.exists()


def test_refusal_lists_every_offending_global(tmp_path):
    marker = tmp_path / "marker_both"
    path = save_evil(tmp_path / "evil.pth", [SystemPayload(marker), ExecPayload(marker)])
    with pytest.raises(UnsafeCheckpointError) as excinfo:
        safe_load_checkpoint(path)
    assert {SYSTEM_GLOBAL, "builtins.exec"} <= set(excinfo.value.offending)
    assert not marker.exists()


# --------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("keep", [0.0, 0.02, 0.5, 0.98])
def test_truncated_checkpoint_gives_clear_error(trained, tmp_path, keep):
    _, path, _ = trained
    with open(path, "rb") as file:
        data = file.read()
    broken = str(tmp_path / "truncated.pth")
    with open(broken, "wb") as file:
        file.write(data[: int(len(data) * keep)])
    with pytest.raises(CorruptCheckpointError, match="truncated, corrupt") as excinfo:
        safe_load_checkpoint(broken)
    assert broken in str(excinfo.value)
    with pytest.raises(CorruptCheckpointError) as excinfo:
        load_checkpoint(ToyModel(), broken, map_location="cpu")
    assert broken in str(excinfo.value)


def test_garbage_file_gives_clear_error(tmp_path):
    path = str(tmp_path / "garbage.pth")
    with open(path, "wb") as file:
        file.write(b"this is not a checkpoint\n" * 20)
    with pytest.raises(CorruptCheckpointError) as excinfo:
        safe_load_checkpoint(path)
    assert path in str(excinfo.value)


def test_http_loader_is_weights_only(trained, tmp_path):
    """mmengine's own http loader unpickles without restriction; the installed one does not."""
    _, path, it = trained
    url = Path(path).as_uri()  # urllib also serves file:// URLs, so no network is needed
    ckpt = load_from_http_safe(url, "cpu", model_dir=str(tmp_path / "hub"), progress=False)
    assert ckpt["meta"]["iter"] == it
    marker = tmp_path / "marker_http"
    evil = Path(save_evil(tmp_path / "evil.pth", SystemPayload(marker)))
    with pytest.raises(UnsafeCheckpointError) as excinfo:
        load_from_http_safe(evil.as_uri(), "cpu", model_dir=str(tmp_path / "hub"), progress=False)
    check_refusal(excinfo, evil.as_uri(), SYSTEM_GLOBAL, marker)
