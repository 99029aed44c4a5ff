"""Behaviours that an eleventh mutation campaign (stop 27) found untested, in modules no earlier campaign mutated
(where a run computes and with how many threads, the report's plots and LaTeX tables, reaching a Ray cluster): each
test here fails on a mutant that the rest of the suite let pass, and checks the code against an independent oracle (a
documented rule restated, a hand-built input with a known answer; for plots, what matplotlib was asked to draw)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lathadapter.adapter.options import OptionError, StateError
from lathadapter.experiments import machine
from lathadapter.experiments.cells import Cell
from lathadapter.experiments.report_latex import escape, latex
from lathadapter.experiments.report_tables import Table

# ------------------------------------------------------------------------------------------ where a run computes


def test_cpu_times_are_idle_plus_iowait_over_the_first_eight_fields(tmp_path: Path) -> None:
    """/proc/stat's `cpu` line: user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    already counted in user and nice, so the total is the first eight fields and the idle time idle + iowait; a
    kernel that writes four fields has no iowait."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3 40 5 6 7 8 1000 2000\ncpu0 1 1 1 1\n")
    assert machine.cpu_times(stat) == (40 + 5, 1 + 2 + 3 + 40 + 5 + 6 + 7 + 8)
    stat.write_text("cpu  1 2 3 40\n")
    assert machine.cpu_times(stat) == (40, 46)


@pytest.mark.parametrize("text", ["", "cpu  1 2 x 4\n", "cpu\n"])
def test_an_unreadable_proc_stat_gives_no_cpu_times(tmp_path: Path, text: str) -> None:
    """An empty file, a field that is no number, a line without fields: None (then the load average), no error."""
    stat = tmp_path / "stat"
    stat.write_text(text)
    assert machine.cpu_times(stat) is None


def test_busy_cpus_samples_for_a_fifth_of_a_second_and_never_reads_below_zero(monkeypatch: pytest.MonkeyPatch
                                                                              ) -> None:
    """Two reads of /proc/stat 0.2 s apart (the process sleeps between); idle time that grew faster than the total (a
    counter's jitter) is no CPU busy, not a negative count; no ticks between the reads (a sample too short to
    count) falls back to the load average."""
    calls: list[object] = []
    samples = iter([(0.0, 0.0), (20.0, 10.0)])  # idle +20 of total +10: a share of -1

    def times() -> tuple[float, float]:
        calls.append("read")
        return next(samples)

    monkeypatch.setattr(machine, "cpu_times", times)
    monkeypatch.setattr(machine.time, "sleep", lambda seconds: calls.append(seconds))
    monkeypatch.setattr(os, "getloadavg", lambda: (3.5, 2.0, 1.0))
    assert machine.busy_cpus() == 0.0
    assert calls == ["read", pytest.approx(0.2), "read"]
    samples = iter([(5.0, 10.0), (5.0, 10.0)])
    assert machine.busy_cpus() == 3.5  # the 1-minute load average


def test_default_threads_ignore_a_zero_omp_num_threads_and_round_the_free_cpus(monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    """OMP_NUM_THREADS=0 is no request (OpenMP ignores it too); the free CPUs are rounded to the nearest: 4 CPUs with
    1.4 kept busy leave 2.6, three threads."""
    monkeypatch.setattr(machine, "available_cpus", lambda: 4)
    monkeypatch.setattr(machine, "busy_cpus", lambda: 1.4)
    monkeypatch.setenv("OMP_NUM_THREADS", "0")
    assert machine.default_threads() == 3
    monkeypatch.setattr(machine, "busy_cpus", lambda: 1.6)  # 2.4 free: two
    assert machine.default_threads() == 2


def test_batch_runs_and_trainers_default_to_the_gpu_s_wherever_the_device_is_not_the_cpu() -> None:
    """docs: a Ray cluster that may have GPUs (`device` None) and any `cuda:N` get the GPU defaults."""
    for device in (None, "cuda", "cuda:1"):
        assert machine.auto_batch_runs(device) == machine.GPU_BATCH_RUNS
        assert machine.auto_trainers(device) == machine.GPU_TRAINERS
    assert (machine.auto_batch_runs("cpu"), machine.auto_trainers("cpu")) == (machine.CPU_BATCH_RUNS, 1)


def test_as_many_threads_as_cpus_are_taken_without_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "available_cpus", lambda: 2)
    before = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert machine.use_threads(2) == 2
    finally:
        torch.set_num_threads(before)


def test_device_none_picks_cuda_where_torch_sees_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert machine.resolve_device(None) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert machine.resolve_device(None) == "cpu"


@pytest.mark.parametrize(("device", "error", "says"), [
    (0, OptionError, "device=0: expected 'cpu', 'cuda', 'cuda:N' or None"),
    ("cpu:0", OptionError, "--device 'cpu:0' is not a device lathadapter trains on"),
    ("cuda:2", StateError, "--device cuda:2: this machine has 2 CUDA device(s), cuda:0 to cuda:1"),
])
def test_a_device_that_is_not_there_is_refused_naming_the_valid_ones(monkeypatch: pytest.MonkeyPatch, device: object,
                                                                     error: type[Exception], says: str) -> None:
    """On a machine of two GPUs (cuda:0 and cuda:1) `cuda:2` is refused, `cuda:1` taken; `cpu` has no index; the
    Python API's integer device is named as given."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(error) as raised:
        machine.resolve_device(device)  # type: ignore[arg-type]
    assert str(raised.value).startswith(says)
    assert machine.resolve_device("cuda:1") == "cuda:1"


# ------------------------------------------------------------------------------------------ LaTeX tables


def test_a_vertical_bar_is_math_in_latex() -> None:
    """In LaTeX's default OT1 text font `|` prints an em dash: it is set as math, `$|$`."""
    assert escape("a|b") == "a$|$b"


def test_a_source_of_several_lines_stays_in_the_first_line_s_comment() -> None:
    """The first line is a `%` comment naming the source: a source with a line break would start a second line of
    LaTeX text outside it."""
    table = Table("few_shot", "Few-shot", ["method"], ["1 shot"], [(["lathadapter"], [Cell(50.0, None, 1)])])
    lines = latex(table, "runs/a\nruns/b").splitlines()
    assert lines[0].startswith("% lathadapter report of runs/a runs/b: table few_shot")
    assert lines[1] == r"\begin{table}[t]\centering"


# ------------------------------------------------------------------------------------------ reaching Ray


@contextlib.contextmanager
def half_answering(answer: bytes, host: str = "127.0.0.1") -> Iterator[int]:
    """A server on a free port of `host` that reads a client's first bytes, sends `answer` and then ends its side
    (no reset: the client reads `answer`, then the end). Yields the port."""
    server = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            held.append(connection)
            try:
                connection.recv(len(HTTP2_PREFACE))
                connection.sendall(answer)
                connection.shutdown(socket.SHUT_WR)
            except OSError:  # a client that did not wait for the answer
                pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for connection in held:
            connection.close()


# RFC 9113 §3.4: an HTTP/2 client's preface, then its SETTINGS frame (9 bytes); a gRPC server answers with a SETTINGS
# frame of its own (length 0, type 4, no flags, stream 0)
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9)
SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def test_an_answer_shorter_than_a_frame_header_is_a_closed_connection() -> None:
    """Three bytes, then the end: no frame header (9 bytes) came, so the server closed the connection."""
    from lathadapter.experiments.ray_cluster import RayBackendError, check_reachable

    with half_answering(b"\x00\x00\x00") as port, pytest.raises(RayBackendError) as raised:
        check_reachable(f"127.0.0.1:{port}", timeout=5)
    assert "is not a Ray cluster (closed the connection)" in str(raised.value)


def test_tls_clusters_are_left_to_ray_whatever_the_spelling_of_true(monkeypatch: pytest.MonkeyPatch) -> None:
    """RAY_USE_TLS=1 or true (any case) as Ray reads it: the GCS speaks TLS, whose answer is no plain HTTP/2 frame,
    so reaching the port is enough."""
    from lathadapter.experiments.ray_cluster import check_reachable

    for value in ("1", "true", "True"):
        monkeypatch.setenv("RAY_USE_TLS", value)
        with half_answering(b"\x16\x03\x01\x00\x02\x02\x46") as port:  # a TLS alert, no HTTP/2
            check_reachable(f"127.0.0.1:{port}", timeout=5)


def test_an_ipv6_address_in_brackets_is_probed_on_its_host_and_port() -> None:
    """`[::1]:PORT`: the port after the last colon, the host without its brackets; an HTTP server there is no
    cluster."""
    from lathadapter.experiments.ray_cluster import RayBackendError, check_reachable

    try:
        server = half_answering(b"HTTP/1.1 400 Bad Request\r\n\r\n", "::1")
        port = server.__enter__()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        with pytest.raises(RayBackendError, match=r"^--address \[::1\]:\d+: a server listens there but is not a Ray "
                                                  r"cluster \(not gRPC\)"):
            check_reachable(f"[::1]:{port}", timeout=5)
    finally:
        server.__exit__(None, None, None)


def test_only_a_ray_client_address_is_refused() -> None:
    """ray://HOST:PORT is Ray Client; a head node whose host name is `ray` (ray:6379) is a cluster's own address."""
    from lathadapter.experiments.ray_cluster import check_address

    check_address("ray:6379")
    check_address("raylet.example:6379")
    with pytest.raises(OptionError, match=r"^--address ray://head:10001: Ray Client \(ray://\) is not supported"):
        check_address("ray://head:10001")


def test_one_try_sets_the_gcs_tries_for_the_block_alone_and_a_user_s_own_wins(monkeypatch: pytest.MonkeyPatch
                                                                              ) -> None:
    from lathadapter.experiments.ray_cluster import GCS_TRIES, one_try

    monkeypatch.delenv(GCS_TRIES, raising=False)
    with one_try(True):
        assert os.environ[GCS_TRIES] == "1"
    assert GCS_TRIES not in os.environ
    monkeypatch.setenv(GCS_TRIES, "5")
    with one_try(True):
        assert os.environ[GCS_TRIES] == "5"
    assert os.environ[GCS_TRIES] == "5"


def test_a_user_s_own_gcs_connect_timeout_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    from lathadapter.experiments.ray_cluster import RAY_SETTINGS, import_ray

    name = "RAY_py_gcs_connect_timeout_s"  # Ray's own spelling
    assert name in RAY_SETTINGS
    monkeypatch.setenv(name, "99")
    import_ray()
    assert os.environ[name] == "99"


def test_an_unauthenticated_cluster_asks_for_its_token() -> None:
    """Ray's gRPC status for a missing token reads `Unauthenticated` (older) or `InvalidAuthToken`: either way the
    message says how to give the token."""
    from lathadapter.experiments.ray_cluster import connection_error

    for cause in ("StatusCode.UNAUTHENTICATED: Unauthenticated", "InvalidAuthToken: bad token"):
        error = ConnectionError("could not connect")
        error.__cause__ = RuntimeError(cause)
        assert "the Ray cluster there asks for its token" in str(connection_error("head:6379", error))


def test_a_cluster_s_address_takes_no_cpu_or_gpu_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ray.init` refuses num_cpus and num_gpus when it connects to a running cluster (they size a local one): given
    an address, they are dropped, the other keywords passed on."""
    from lathadapter.experiments import ray_cluster

    inits: list[dict[str, object]] = []

    class FakeRay:
        def is_initialized(self) -> bool:
            return False

        def init(self, **kwargs: object) -> None:
            inits.append(kwargs)

        def shutdown(self) -> None:
            pass

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_cluster, "import_ray", FakeRay)
    monkeypatch.setattr(ray_cluster, "check_reachable", lambda *args, **kwargs: None)
    with ray_cluster.connect("head:6379", {"num_cpus": 2, "num_gpus": 1, "namespace": "x"}):
        pass
    with ray_cluster.connect(None, {"num_cpus": 2}):
        pass
    assert "num_cpus" not in inits[0] and "num_gpus" not in inits[0]
    assert (inits[0]["address"], inits[0]["namespace"]) == ("head:6379", "x")
    assert inits[1]["num_cpus"] == 2


# ------------------------------------------------------------------------------------------ plots


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The figures the plots would save, kept instead of written (what matplotlib was asked to draw)."""
    from lathadapter.experiments import plots

    figures: list[object] = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    return figures


def test_a_long_name_is_cut_to_its_limit_with_the_ellipsis_counted() -> None:
    from lathadapter.experiments.plots import shortened

    assert shortened("abcdef", 4) == "abc…" and len(shortened("abcdef", 4)) == 4
    assert shortened("abcd", 4) == "abcd"


@pytest.mark.parametrize("classes", [40, 41])
def test_a_confusion_matrix_names_its_classes_up_to_forty(drawn: list[object], tmp_path: Path, classes: int) -> None:
    """docs: class names on both axes up to 40 classes; beyond, the ticks number the labels and the axis titles say
    `(label)`."""
    from lathadapter.experiments.plots import plot_confusion

    names = [f"class{i}" for i in range(classes)]
    plot_confusion(torch.eye(classes, dtype=torch.long), names, "t", tmp_path / "c.png")
    ax = drawn[0].axes[0]  # type: ignore[attr-defined]
    named = classes <= 40
    assert ([t.get_text() for t in ax.get_yticklabels()] == names) is named
    assert ax.get_xlabel() == "predicted class" + ("" if named else " (label)")
    assert ax.get_ylabel() == "true class" + ("" if named else " (label)")


def test_a_full_row_of_reliability_panels_puts_the_legend_under_them(drawn: list[object], tmp_path: Path) -> None:
    """Five panels fill their row (no free slot): the legend goes under the panels, never over a panel; six leave
    four slots of a second row free, the last of which holds it."""
    from lathadapter.adapter.evaluate import ECE_BINS, Reliability
    from lathadapter.experiments.plots import plot_run_reliability

    bins = Reliability(tuple([2] * ECE_BINS), tuple([1] * ECE_BINS), tuple([1.5] * ECE_BINS))
    for count in (5, 6):
        plot_run_reliability([(f"set {i}", bins) for i in range(count)], "run", tmp_path / f"r{count}.png")
    full, spare = drawn
    assert len(full.legends) == 1  # type: ignore[attr-defined]
    assert all(ax.get_legend() is None for ax in full.axes)  # type: ignore[attr-defined]
    assert not spare.legends and spare.axes[-1].get_legend() is not None  # type: ignore[attr-defined]


def test_the_strip_s_tallest_bin_reaches_the_strip_s_height(drawn: list[object], tmp_path: Path) -> None:
    """Under a panel, each bin's share of the images as a grey bar, the tallest at the strip's height (20 points of
    the accuracy axis): bins of 1 and 3 images draw 20/3 and 20."""
    from lathadapter.adapter.evaluate import ECE_BINS, Reliability
    from lathadapter.experiments.plots import IMAGES_STRIP, plot_run_reliability

    images = [0] * ECE_BINS
    images[2], images[10] = 1, 3
    bins = Reliability(tuple(images), tuple(images), tuple(0.5 * n for n in images))
    plot_run_reliability([("test", bins)], "run", tmp_path / "r.png")
    ax = drawn[0].axes[0]  # type: ignore[attr-defined]
    strip = sorted(p.get_height() for p in ax.patches if p.get_y() == pytest.approx(-IMAGES_STRIP - 2))
    assert strip == pytest.approx([20 / 3, 20.0])


def test_an_ablation_from_zero_keeps_a_linear_axis(drawn: list[object], tmp_path: Path) -> None:
    """A log axis only where every value is positive and the largest is 10× the smallest or more: 0 and 10 are on a
    linear one (a log axis has no 0)."""
    from lathadapter.experiments.plots import AblationLine, _plot_ablation

    line = AblationLine("1 shot", "1 shot", {"0": Cell(50.0, 1.0, 2), "10": Cell(60.0, 1.0, 2)}, 0)
    assert _plot_ablation([line], "opt.lr", "t", tmp_path / "a.png") is not None
    assert drawn[0].axes[0].get_xscale() == "linear"  # type: ignore[attr-defined]
