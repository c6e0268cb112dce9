"""A run's life: unique folders, cache keys of exactly the right inputs, the logger checked first and fed last, the
task wrapper closing what is open, the optimised metric by name."""

from __future__ import annotations

import hashlib
import http.server
import json
import multiprocessing as mp
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, open_dict

from ami_lightning.cli import apps, run_stamp
from ami_lightning.models.classifiers import Classifier
from ami_lightning.models.dlib_files import FACE_RECOGNITION_RESNET, dlib_model_path
from ami_lightning.pipeline import cache, loggers
from ami_lightning.pipeline import stages as pipeline
from ami_lightning.reporting.results import RunResults, SetResult
from ami_lightning.witnesses import stage as witness_stage
from tests.conftest import compose_config, cpu_config


# ---- run folders ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_runs_started_in_the_same_second_get_their_own_folders() -> None:
    """Each process names its run folder once (timestamp + random suffix): two processes started together differ."""
    code = "from ami_lightning.cli import run_stamp; print(run_stamp())"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    stamps = [p.communicate()[0].strip() for p in procs]
    assert stamps[0] != stamps[1]
    assert all(len(s) == len("2026-12-01_02-50-20_") + 6 for s in stamps)
    assert run_stamp() == run_stamp()  # fixed within a process


def witness_key(cfg: DictConfig) -> str:
    """The cache key of the witnesses AmI extracts for ``cfg``'s model and witness rule."""
    return witness_stage.witness_key(cache.model_identity(cfg.model, cfg.paths.cache_dir), cfg.ami.caffe_median,
                                     cfg.paths.cache_dir)


def test_run_and_sweep_folders_carry_the_stamp(tmp_path: Path) -> None:
    cfg = compose_config("eval")
    assert cfg.hydra.run.dir.endswith(run_stamp()) and cfg.hydra.sweep.dir.endswith(run_stamp())


# ---- cache keys -----------------------------------------------------------------------------------------------------
def test_file_digest_is_sha256_remembered_by_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"a" * 1000)
    calls = []
    real = cache._sha256
    monkeypatch.setattr(cache, "_sha256", lambda path: calls.append(path) or real(path))
    store = tmp_path / "cache"
    assert cache.file_digest(weights, store) == hashlib.sha256(b"a" * 1000).hexdigest()
    assert cache.file_digest(weights, store) == hashlib.sha256(b"a" * 1000).hexdigest()
    assert len(calls) == 1  # the second call read the memo, not the file
    weights.write_bytes(b"b" * 1001)  # replaced at the same path
    assert cache.file_digest(weights, store) == hashlib.sha256(b"b" * 1001).hexdigest() and len(calls) == 2
    (store / "digests.json").write_text("{torn")  # a damaged memo is rebuilt
    assert cache.file_digest(weights, store) == hashlib.sha256(b"b" * 1001).hexdigest()


def test_keys_ignore_batch_size_and_follow_the_weights_content(tmp_path: Path) -> None:
    """Batch size and workers never change a key; the weights file's content does, its path does not."""
    base = cpu_config(compose_config("run"), tmp_path)
    other_batch = cpu_config(compose_config("run", ["data.batch_size=7", "data.num_workers=3"]), tmp_path)
    assert witness_key(base) == witness_key(other_batch)
    assert cache.model_identity(base.model, base.paths.cache_dir) == cache.model_identity(other_batch.model)

    copy = tmp_path / "copy.dat"
    shutil.copyfile(dlib_model_path(FACE_RECOGNITION_RESNET), copy)
    same = cpu_config(compose_config("run", [f"model.weights={copy}"]), tmp_path)
    assert witness_key(same) == witness_key(base)  # same content elsewhere: same witnesses
    with open(copy, "ab") as handle:
        handle.write(b"\0")
    assert witness_key(same) != witness_key(base)  # a changed file at that path: new witnesses and attack sets
    caffe = cpu_config(compose_config("run", ["ami=caffe"]), tmp_path)
    assert witness_key(caffe) != witness_key(base)  # the witness rule


def test_a_stage_version_bump_invalidates_its_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = cpu_config(compose_config("run"), tmp_path)
    before = witness_key(cfg)
    monkeypatch.setitem(cache.STAGE_VERSIONS, "witnesses", cache.STAGE_VERSIONS["witnesses"] + 1)
    assert witness_key(cfg) != before


# ---- loggers --------------------------------------------------------------------------------------------------------
def _wandb_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    return cpu_config(compose_config("eval", ["logger=wandb", *overrides]), tmp_path)


def test_wandb_online_without_key_or_server_fails_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    online = _wandb_cfg(tmp_path, "logger.offline=false")
    with pytest.raises(loggers.LoggerError, match="needs a W&B API key .* logger.offline=true"):
        loggers.check_logger(online)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    with socket_closed_port() as port:
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        with pytest.raises(loggers.LoggerError, match=rf"127.0.0.1:{port} does not answer within 1 s: "
                                                      r"no connection \(ConnectionRefusedError"):
            loggers.check_logger(online, probe_timeout=1)

    def hang(*_args: object, **_kwargs: object) -> None:
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", hang)
    with pytest.raises(loggers.LoggerError, match=r"within 10 s: no connection \(TimeoutError: timed out\)"):
        loggers.check_logger(online)
    loggers.check_logger(_wandb_cfg(tmp_path))  # offline (the default): nothing to check


@contextmanager
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts every connection and never answers; yields its port. Closed (and its
    connections) on exit; its thread ends then."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in [*accepted, server]:
            connection.close()


def test_wandb_online_against_a_server_that_never_answers_fails_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    online = _wandb_cfg(tmp_path, "logger.offline=false")
    with silent_server() as port:
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        with pytest.raises(loggers.LoggerError, match=rf"127.0.0.1:{port} does not answer within 0.5 s: it "
                                                      r"accepted the connection but sent no answer \(TimeoutError"):
            loggers.check_logger(online, probe_timeout=0.5)
        assert loggers.answers(f"https://127.0.0.1:{port}", 0.5).startswith(  # type: ignore[union-attr]
            "it accepted the connection but sent no answer (TimeoutError")  # no TLS handshake either
    server = http.server.HTTPServer(("127.0.0.1", 0), QuietHandler)  # a server that answers: the run goes on
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
        loggers.check_logger(online, probe_timeout=5)
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """Answers ``HEAD`` with 404, logging nothing."""

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(404)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        return None


def test_a_malformed_wandb_key_fails_at_start_up_naming_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    online = _wandb_cfg(tmp_path, "logger.offline=false")
    with socket_closed_port() as port:  # the key is checked first: the server is never contacted
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
        with pytest.raises(loggers.LoggerError, match=r"the W&B API key from WANDB_API_KEY is malformed: API key "
                                                      r"must have 40\+ characters, has 16\..*logger.offline=true"):
            loggers.check_logger(online)
        monkeypatch.delenv("WANDB_API_KEY")
        netrc = tmp_path / "netrc"
        netrc.write_text("machine 127.0.0.1\n  login user\n  password local-abc\n")
        netrc.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc))
        with pytest.raises(loggers.LoggerError, match=rf"key from {netrc} \(machine 127.0.0.1\) is malformed: API "
                                                      r"key must have 40\+ characters, has 3\."):
            loggers.check_logger(online)
        netrc.write_text("machine 127.0.0.1\n  login user\n  password local-" + "a1" * 20 + "\n")
        assert loggers.api_key_problem("local-" + "a1" * 20) is None  # a self-hosted server's key: accepted
        with pytest.raises(loggers.LoggerError, match="does not answer"):  # the key passes; the server is down
            loggers.check_logger(online, probe_timeout=1)


class FailingWandbLogger(WandbLogger):
    """A W&B logger whose run never starts (as against a server that never answers), counting the attempts."""

    starts = 0

    @property
    def experiment(self) -> Any:
        type(self).starts += 1
        raise TimeoutError(f"start {type(self).starts} timed out")


def test_a_logger_that_fails_to_start_is_not_started_again_by_the_clean_up(tmp_path: Path) -> None:
    cfg = _wandb_cfg(tmp_path)
    with open_dict(cfg):
        cfg.logger._target_ = f"{__name__}.FailingWandbLogger"
    results = RunResults(sets=[SetResult("ami", "benign", adversarial=False, n=2, eligible=2, flagged=1)], model="toy",
                         detectors={"ami": {"type": "ami"}})
    with pytest.raises(loggers.LoggerError, match=r"could not start \(TimeoutError: start 1 timed out\)") as caught:
        loggers.log_results(cfg, results, {})
    assert FailingWandbLogger.starts == 1 and isinstance(caught.value.__cause__, TimeoutError)


@pytest.mark.slow
def test_wandb_against_a_silent_server_starts_once_and_reports_its_first_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real wandb (its own short timeouts) against a server on 127.0.0.1 that accepts and never answers: one start,
    one run folder, its error reported (before the fix: two starts, two folders, the second error)."""
    import wandb

    wandb.teardown()  # an earlier test's wandb settings (its 90 s init timeout) are otherwise kept for the process
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "4")
    monkeypatch.setenv("WANDB_HTTP_TIMEOUT", "2")
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # as an earlier offline WandbLogger of the process leaves it
    cfg = _wandb_cfg(tmp_path, "logger.offline=false")
    results = RunResults(sets=[SetResult("ami", "benign", adversarial=False, n=2, eligible=2, flagged=1)], model="toy",
                         detectors={"ami": {"type": "ami"}})
    try:
        with silent_server() as port:
            monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
            with pytest.raises(loggers.LoggerError, match="WandbLogger could not start"):
                loggers.log_results(cfg, results, {})
    finally:
        wandb.teardown()  # wandb keeps this server's settings for the process otherwise
    assert len(list((Path(cfg.paths.output_dir) / "wandb").glob("run-*"))) == 1


def test_the_task_wrapper_reports_the_job_error_when_closing_wandb_fails_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class OpenRun:
        run = object()

        @staticmethod
        def finish(exit_code: int) -> None:
            raise ConnectionError(f"finish({exit_code}) failed")

    monkeypatch.setitem(sys.modules, "wandb", OpenRun)

    @apps.task
    def failing(_cfg: DictConfig) -> None:
        raise RuntimeError("job failed")

    with pytest.raises(RuntimeError, match="job failed"):
        failing(cpu_config(compose_config("eval"), tmp_path))

    @apps.task
    def succeeding(_cfg: DictConfig) -> None:
        return None

    with pytest.raises(ConnectionError, match=r"finish\(0\) failed"):  # after a success it is the job's error
        succeeding(cpu_config(compose_config("eval"), tmp_path))


class socket_closed_port:
    """A local TCP port with nothing listening (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *_args: object) -> None:
        return None


class BrokenLogger:
    """A logger whose construction fails, as a W&B logger without network may."""

    def __init__(self, **_kwargs: object) -> None:
        raise ConnectionError("logger service unavailable")


@pytest.mark.slow
def test_results_are_written_before_the_logger_starts(tmp_path: Path) -> None:
    """A logger that fails loses nothing: results.json and the plots are already on disk."""
    cfg = cpu_config(compose_config("eval", ["attack=[]"]), tmp_path)
    with open_dict(cfg):
        cfg.data.benign.limit = 3
        cfg.logger = {"_target_": f"{__name__}.BrokenLogger"}
    with pytest.raises(Exception, match="logger service unavailable"):
        apps._eval(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["sets"][0]["name"] == "benign" and results["sets"][0]["n"] == 12


def test_wandb_run_gets_the_whole_config_and_is_closed_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
    cfg = _wandb_cfg(tmp_path, "ami.weaken=777")
    logger = loggers.logger_from(cfg)
    assert logger is not None and logger._wandb_init.get("group") is None  # a single run has no group
    logger.log_hyperparams(loggers.run_config(cfg))
    assert logger.experiment.config["ami"]["weaken"] == 777 and "hydra" not in logger.experiment.config
    assert wandb.run is not None

    @apps.task
    def failing(_cfg: DictConfig) -> None:
        raise RuntimeError("job failed")

    with pytest.raises(RuntimeError, match="job failed"):
        failing(cpu_config(compose_config("eval"), tmp_path))
    assert wandb.run is None  # closed by the task wrapper's finally


# ---- the task wrapper -----------------------------------------------------------------------------------------------
def test_optimized_metric_is_named_and_checked(tmp_path: Path) -> None:
    assert compose_config("eval", ["hparams_search=optuna"]).optimized_metric == "objective/fpr_gap"
    cfg = cpu_config(compose_config("eval", ["optimized_metric=ami/fgsm/auroc"]), tmp_path)
    assert apps.optimized_value(cfg, {"ami/fgsm/auroc": 0.75, "ami/benign/rate": 0.1}) == 0.75
    with pytest.raises(KeyError, match=r"optimized_metric='ami/fgsm/auroc' is not a metric of this job; it has: "
                                       r"\['ami/benign/rate'\]"):
        apps.optimized_value(cfg, {"ami/benign/rate": 0.1})
    assert apps.optimized_value(cpu_config(compose_config("eval"), tmp_path), {"ami/benign/rate": 0.1}) is None


def test_a_refused_config_leaves_no_run_folder(tmp_path: Path) -> None:
    cfg = cpu_config(compose_config("eval", ["ami.weaken=-1"]), tmp_path)
    out = Path(cfg.paths.output_dir)
    (out / ".hydra").mkdir(parents=True)
    (out / "eval.log").write_text("")
    with pytest.raises(ValueError, match="ami.weaken"):
        apps._eval(cfg)
    assert not out.exists()


# ---- concurrent runs on a cold cache --------------------------------------------------------------------------------
def _fake_extraction(counter: Path):  # noqa: ANN202 - returns the two fakes
    from ami_lightning.witnesses import WitnessSet

    def extract(model, layers, *_args, **_kwargs):  # noqa: ANN001, ANN202
        with open(counter, "a") as handle:
            handle.write("extracted\n")
        time.sleep(1.0)  # long enough for the other process to arrive while this one works
        mapping = {attr: {layers[0]: [0, 1]} for attr in ("leye", "reye", "nose", "mouth")}
        return WitnessSet.from_mapping(mapping, layers), None

    return extract, lambda _mutations, path: Path(path).write_bytes(b"png")


def _witnesses_in_child(cfg: DictConfig, out: Path, counter: Path, queue: mp.Queue) -> None:
    """One run's witness stage, in a fresh (spawned) process, with the extraction replaced by a slow fake."""
    from ami_lightning.models.base import Normalize, PixelModel
    from tests.toy import ToyNet

    witness_stage.witnesses_from_faces, witness_stage.save_mutation_grid = _fake_extraction(counter)
    net = ToyNet(224)  # untrained: only its layers matter here (224 px: the witness check's forward pass)
    classifier = Classifier("toy", PixelModel(net, Normalize((128.0,) * 3, (64.0,) * 3), net.hook_layers), ["a"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    detector = pipeline.prepare_detectors(cfg, classifier, names=["ami"])["ami"]
    queue.put(detector.witnesses.count())


@pytest.mark.slow
def test_concurrent_runs_extract_witnesses_once(tmp_path: Path) -> None:
    """Two runs on a cold cache: one extracts under the lock, the other waits and reads its entry; no temporary
    folder is left and both get the same witnesses. (Spawned, not forked: a fork after torch's OpenMP pool has
    started can hang the child.)"""
    counter = tmp_path / "count"
    cfg = cpu_config(compose_config("eval"), tmp_path)
    context = mp.get_context("spawn")
    queue = context.Queue()
    procs = [context.Process(target=_witnesses_in_child, args=(cfg, tmp_path / f"out{i}", counter, queue))
             for i in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(300)
    assert [proc.exitcode for proc in procs] == [0, 0]
    counts = [queue.get(timeout=5) for _ in procs]
    assert counts[0] == counts[1] == {"leye": 2, "reye": 2, "nose": 2, "mouth": 2}
    assert counter.read_text() == "extracted\n"
    entries = sorted(p.name for p in (Path(cfg.paths.cache_dir) / "witnesses").iterdir())
    assert entries == [witness_key(cfg), f"{witness_key(cfg)}.lock"]


def test_witness_files_are_checked_against_the_model_before_use(tmp_path: Path) -> None:
    """A witness list naming a channel the model's layer does not have stops the run at the witness stage, naming
    the file, line and layer (it used to fail inside test_step with a bare index error)."""
    from ami_lightning.models.base import Normalize, PixelModel
    from tests.toy import ToyNet

    net = ToyNet(224)  # untrained; 224 px, the size the check's forward pass uses
    classifier = Classifier("toy", PixelModel(net, Normalize((128.0,) * 3, (64.0,) * 3), net.hook_layers), ["a"])
    folder = tmp_path / "witnesses"
    folder.mkdir()
    for attr in ("leye", "reye", "nose", "mouth"):
        channel = 16 if attr == "nose" else 3  # relu1 has 16 channels: 0..15
        (folder / f"{attr}_neurons.txt").write_text(f"relu1->{channel}\nrelu2->1\n")
    cfg = cpu_config(compose_config("eval", [f"ami.witnesses={folder}"]), tmp_path)
    with pytest.raises(ValueError, match=r"witnesses/nose_neurons.txt:1: attribute 'nose': channel 16 out of range at "
                                         r"layer 'relu1': allowed 0..15 \(16 channels\)"):
        pipeline.prepare_detectors(cfg, classifier, names=["ami"])
