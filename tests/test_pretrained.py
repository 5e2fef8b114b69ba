"""ImageNet weights as users get them, plus the lower backbone learning rate for fine-tuning.

The weights are downloaded through a real HTTP server on 127.0.0.1 into a temporary TORCH_HOME, hash-checked,
cached, never a hang.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torchvision

from bcl.cli import main
from bcl.config import ConfigError, LinearConfig, OptimConfig, load_config
from bcl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from bcl.engine import build_optimizer, build_scheduler
from bcl.models import (
    PretrainedWeightsNotFoundError,
    WeightsDownloadError,
    build_encoder,
    build_model,
    fetch_imagenet_weights,
    imagenet_weights_path,
)
from bcl.models import pretrained
from bcl.stages import LinearProbeModel, run_linear
from process_launch import free_port, launch

HOST = "127.0.0.1"  # the only address any test here talks to


def weights_file(state: dict, stem: str = "tiny") -> tuple:
    """``(name, bytes)``: ``state`` saved with torch.save, named ``<stem>-<first 10 hex of its sha256>.pth``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    return f"{stem}-{hashlib.sha256(data).hexdigest()[:10]}.pth", data


TINY = {"weight": torch.arange(6.0).reshape(2, 3)}


class WeightsServer:
    """Serves ``files`` (name -> bytes) over HTTP on 127.0.0.1 and records every request path."""

    def __init__(self, files: dict, delay_s: float = 0.0) -> None:
        self.files, self.delay_s, self.requests = dict(files), delay_s, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                time.sleep(server.delay_s)
                data = server.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.httpd.server_address[1]}/"

    def __enter__(self) -> "WeightsServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def silent_server():
    """Accepts TCP connections (the kernel's backlog) but never sends a byte."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen(8)
        yield f"http://{HOST}:{sock.getsockname()[1]}/"


def serve_as_imagenet(monkeypatch, url: str) -> None:
    """The one seam: torchvision's enum URL for every architecture becomes ``url``."""
    monkeypatch.setattr(pretrained, "_imagenet_url", lambda name, weights="imagenet": (url, "IMAGENET1K_V1"))


def cache_listing(hub: Path) -> list:
    folder = hub / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# --------------------------------------------------------------------------- download and cache


def test_first_build_downloads_and_checks_the_hash_the_second_reads_the_cache(hub_dir, monkeypatch, caplog):
    torch.manual_seed(3)
    state = torchvision.models.resnet18(weights=None).state_dict()  # fc.* included, like torchvision's file
    name, data = weights_file(state, "resnet18")
    with WeightsServer({name: data}) as server:
        serve_as_imagenet(monkeypatch, server.url + name)
        with caplog.at_level("INFO", logger="bcl.models.pretrained"):
            first = build_encoder("resnet18", weights="imagenet")
        assert server.requests == ["/" + name]
        assert any("downloading ImageNet weights" in r.getMessage() for r in caplog.records)
        cached = hub_dir / "checkpoints" / name
        assert cache_listing(hub_dir) == [name]
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
        second = build_encoder("resnet18", weights="imagenet", allow_download=False)
        third = build_encoder("resnet18", weights="imagenet")
        assert server.requests == ["/" + name]  # both read the cache
    for encoder in (first, second, third):
        own = encoder.backbone.state_dict()
        assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("fc."))
    assert socket.getdefaulttimeout() is None  # the download's timeout did not leak into the process


def test_a_corrupt_download_is_refused_and_not_left_in_the_cache(hub_dir, monkeypatch):
    name, data = weights_file(TINY)
    corrupt = data[:-1] + bytes([data[-1] ^ 0xFF])
    with WeightsServer({name: corrupt}) as server:
        serve_as_imagenet(monkeypatch, server.url + name)
        with pytest.raises(WeightsDownloadError) as info:
            fetch_imagenet_weights("resnet18")
        message = str(info.value)
        assert "\n" not in message and "corrupt" in message and "invalid hash value" in message
        assert server.url + name in message and str(hub_dir / "checkpoints" / name) in message
        assert cache_listing(hub_dir) == []  # no file, no .partial left behind
        server.files[name] = data  # a good copy now downloads normally
        assert fetch_imagenet_weights("resnet18") == hub_dir / "checkpoints" / name
        assert len(server.requests) == 2


def test_a_server_that_never_answers_ends_in_a_clear_error_within_the_timeout(hub_dir, monkeypatch):
    name, _ = weights_file(TINY)
    with silent_server() as url:
        serve_as_imagenet(monkeypatch, url + name)
        start = time.monotonic()
        with pytest.raises(WeightsDownloadError) as info:
            fetch_imagenet_weights("resnet18", timeout_s=1.0)
        elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 10
    message = str(info.value)
    assert "\n" not in message and "no answer within the download timeout of 1 s" in message
    assert url + name in message and str(hub_dir / "checkpoints") in message
    assert cache_listing(hub_dir) == []
    assert socket.getdefaulttimeout() is None


def test_allow_download_false_reads_the_cache_only(hub_dir, monkeypatch):
    name, data = weights_file(TINY)
    with WeightsServer({name: data}) as server:
        serve_as_imagenet(monkeypatch, server.url + name)
        with pytest.raises(PretrainedWeightsNotFoundError) as info:
            fetch_imagenet_weights("resnet18", allow_download=False)
        assert not isinstance(info.value, WeightsDownloadError) and server.requests == []
    message = str(info.value)
    assert "\n" not in message and "downloading is off" in message
    assert str(hub_dir / "checkpoints" / name) in message and server.url + name in message


def test_the_cli_fails_in_one_line_when_the_server_is_unreachable(hub_dir, monkeypatch, tmp_path, capsys):
    url = f"http://{HOST}:{free_port()}/resnet18-0123456789.pth"  # nothing listens there: refused at once
    serve_as_imagenet(monkeypatch, url)
    argv = ["model.weights=imagenet", "model.finetune=true", "optim.epochs=1", f"run.output_dir={tmp_path / 'runs'}"]
    start = time.monotonic()
    assert main(LinearConfig, run_linear, "stage 2", argv) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: could not download ImageNet weights") and "\n" not in err
    assert url in err and "resnet18-0123456789.pth" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() and cache_listing(hub_dir) == []


# --------------------------------------------------------------------------- two processes


def download_worker(rank: int, port: int, base_url: str, torch_home: str, out: str) -> None:
    os.environ.update(MASTER_ADDR=HOST, MASTER_PORT=str(port), TORCH_HOME=torch_home, LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    result = {}
    try:
        missing = base_url + "missing-0123456789.pth"
        pretrained._imagenet_url = lambda name, weights="imagenet": (missing, "IMAGENET1K_V1")
        try:
            fetch_imagenet_weights("resnet18", timeout_s=5.0)
        except WeightsDownloadError as error:
            result["missing"] = str(error)
        name = weights_file(TINY)[0]
        pretrained._imagenet_url = lambda name_, weights="imagenet": (base_url + name, "IMAGENET1K_V1")
        path = fetch_imagenet_weights("resnet18", timeout_s=5.0)
        result["path"], result["sha256"] = str(path), hashlib.sha256(path.read_bytes()).hexdigest()
    finally:
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_ranks_download_once_and_share_failures(tmp_path):
    name, data = weights_file(TINY)
    torch_home = tmp_path / "torch_home"
    # The delay makes rank 1 find nothing in the cache if it did not wait for rank 0.
    with WeightsServer({name: data}, delay_s=0.5) as server:
        launch(download_worker, (free_port(), server.url, str(torch_home), str(tmp_path)), nprocs=2)
        results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
        assert server.requests == ["/missing-0123456789.pth", "/" + name]  # one request per file, from rank 0
    assert "HTTP Error 404" in results[0]["missing"]
    assert (results[1]["missing"].startswith("rank 0 could not get the ImageNet weights")
            and "404" in results[1]["missing"])
    expected = str(torch_home / "hub" / "checkpoints" / name)
    assert [r["path"] for r in results] == [expected, expected]
    assert {r["sha256"] for r in results} == {hashlib.sha256(data).hexdigest()}


# --------------------------------------------------------------------------- variants and normalisation


def test_imagenet_variants_come_from_torchvisions_enum(hub_dir):
    for arch in ("resnet18", "resnet34", "resnet50"):
        enum = torchvision.models.get_model_weights(arch)
        path, url, tag = imagenet_weights_path(arch)
        assert (url, tag, path) == (enum.DEFAULT.url, enum.DEFAULT.name,
                                    hub_dir / "checkpoints" / url.rsplit("/", 1)[1])
        for weights in enum:
            variant = weights.name.rsplit("_", 1)[1]
            assert imagenet_weights_path(arch, f"imagenet:{variant.lower()}")[1:] == (weights.url, weights.name)
    assert imagenet_weights_path("resnet50", "imagenet:V1")[0].name == "resnet50-0676ba61.pth"
    with pytest.raises(ValueError, match=r"no ImageNet weights 'V2' for resnet18; accepted: 'imagenet', 'imagenet:V1'"):
        imagenet_weights_path("resnet18", "imagenet:V2")
    with pytest.raises(ConfigError, match=r"model.weights: .*'V2' for resnet34"):
        load_config(LinearConfig, overrides=["model.encoder=resnet34", "model.weights=imagenet:V2"])
    with pytest.raises(ConfigError, match="model.download_timeout_s must be > 0"):
        load_config(LinearConfig, overrides=["model.download_timeout_s=0"])


def test_the_images_are_normalised_as_torchvisions_imagenet_weights_expect():
    for arch in ("resnet18", "resnet34", "resnet50"):
        for weights in torchvision.models.get_model_weights(arch):
            preset = weights.transforms()
            assert tuple(preset.mean) == IMAGENET_MEAN and tuple(preset.std) == IMAGENET_STD, weights


# --------------------------------------------------------------------------- backbone learning rate


MODELS = {
    "finetune": lambda: LinearProbeModel(build_encoder("resnet18", small_image_stem=True), 3, frozen=False),
    "bcl_model": lambda: build_model("resnet18", 3, small_image_stem=True, proj_dim=8),
}


@pytest.mark.parametrize("kind", MODELS)
def test_backbone_lr_scale_gives_encoder_and_heads_their_rates_through_the_schedule(kind):
    model = MODELS[kind]()
    cfg = OptimConfig(name="sgd", lr=0.1, backbone_lr_scale=0.1, epochs=3, warmup_epochs=1, schedule="cosine")
    optimizer = build_optimizer(model, cfg)
    encoder_group, head_group = optimizer.param_groups
    assert {id(p) for p in encoder_group["params"]} == {id(p) for p in model.encoder.parameters()}
    heads = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    assert {id(p) for p in head_group["params"]} == {id(p) for p in heads} and heads
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=2)  # 6 steps, 2 of warmup
    factors = [0.5, 1.0, 1.0, 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 4)).item()), 0.5, None]
    for step, factor in enumerate(factors[:-1]):
        assert head_group["lr"] == pytest.approx(0.1 * factor), step
        assert encoder_group["lr"] == pytest.approx(0.01 * factor), step
        optimizer.step()
        scheduler.step()
    # A resumed run (same config) continues with the same two rates.
    resumed = build_optimizer(model, cfg)
    resumed_scheduler = build_scheduler(resumed, cfg, steps_per_epoch=2)
    resumed.load_state_dict(optimizer.state_dict())
    resumed_scheduler.load_state_dict(scheduler.state_dict())
    assert [g["lr"] for g in resumed.param_groups] == pytest.approx([g["lr"] for g in optimizer.param_groups])


def test_backbone_lr_scale_edge_cases():
    frozen = LinearProbeModel(build_encoder("resnet18", small_image_stem=True), 3, frozen=True)
    only_head = build_optimizer(frozen, OptimConfig(name="adam", lr=1e-3, backbone_lr_scale=0.1))
    assert len(only_head.param_groups) == 1 and only_head.param_groups[0]["lr"] == 1e-3
    assert {id(p) for p in only_head.param_groups[0]["params"]} == {id(p) for p in frozen.classifier.parameters()}
    model = build_model("resnet18", 3, small_image_stem=True, proj_dim=8)
    single = build_optimizer(model, OptimConfig())  # scale 1.0: one group, as in older checkpoints
    assert len(single.param_groups) == 1 and single.param_groups[0]["lr"] == 0.05
    assert build_optimizer(model.parameters(), OptimConfig()).param_groups[0]["lr"] == 0.05
    with pytest.raises(ValueError, match="backbone_lr_scale"):
        build_optimizer(model.parameters(), OptimConfig(backbone_lr_scale=0.1))
    for bad in ("0", "1.5", "-0.1"):
        with pytest.raises(ConfigError, match=r"optim.backbone_lr_scale must be in \(0, 1\]"):
            load_config(LinearConfig, overrides=[f"optim.backbone_lr_scale={bad}"])
