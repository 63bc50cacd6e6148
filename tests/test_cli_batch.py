"""`repaint submit --images DIR [--masks DIR] -o OUTDIR`: folders in, folders out, against a real API,
real workers and a real redis-server. The pairing of files by name is tested on its own at the top."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image

from service.batch import BatchProgress, Pair, _Batch, discover, output_paths, write_atomically
from service.client import _retry_after
from tests.procs import ROOT, ApiProcess, RedisServer, WorkerProcess, free_port, wait_until
from worker.jobs import events_channel

# The cheapest job that still runs the whole path: 5 DDNM steps of the 32 px test model.
CHEAP = ("--sampler", "ddnm", "--steps", "5", "--strategy", "resize", "--seed", "1")


# ---- which files go together (no service) -------------------------------------------------------

def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_masks_are_matched_by_name_whatever_the_extension(tmp_path):
    touch(tmp_path / "photos", "cat.jpg", "dog.PNG", "eel.webp", "fox.jpeg", "notes.txt", ".DS_Store", ".cat.png.ab.part")
    touch(tmp_path / "masks", "cat.png", "dog.webp", "fox.png", "gnu.png", "readme.md")
    (tmp_path / "photos" / "sub").mkdir()
    found = discover(tmp_path / "photos", tmp_path / "masks")
    assert [(p.name, p.image.name, p.mask and p.mask.name) for p in found.pairs] == [
        ("cat", "cat.jpg", "cat.png"), ("dog", "dog.PNG", "dog.webp"), ("eel", "eel.webp", None),
        ("fox", "fox.jpeg", "fox.png")]
    assert found.images == 4
    assert [p.name for p in found.without_mask] == ["eel.webp"]
    assert [p.name for p in found.unmatched_masks] == ["gnu.png"]
    assert sorted(p.name for p in found.ignored) == ["notes.txt", "readme.md"]  # hidden files and folders: silently
    assert not found.clashes


def test_without_a_mask_folder_every_image_goes_alone(tmp_path):
    touch(tmp_path, "a.png", "b.jpg")
    found = discover(tmp_path)
    assert [(p.name, p.mask) for p in found.pairs] == [("a", None), ("b", None)]
    assert not found.without_mask  # nothing to say: no mask folder was given


def test_names_that_two_files_share_are_not_guessed(tmp_path):
    touch(tmp_path / "photos", "cat.jpg", "cat.png", "dog.png", "eel.png")
    touch(tmp_path / "masks", "dog.png", "dog.jpg", "eel.png")
    found = discover(tmp_path / "photos", tmp_path / "masks")
    assert [p.name for p in found.pairs] == ["eel"]
    assert [(c.label, [p.name for p in c.paths]) for c in found.clashes] == [
        ("cat", ["cat.jpg", "cat.png"]), ("dog.png", ["dog.jpg", "dog.png"])]


def test_output_names_follow_the_single_image_rule(tmp_path):
    assert output_paths(tmp_path / "cat.png", 1) == [tmp_path / "cat.png"]
    assert output_paths(tmp_path / "cat.png", 3) == [tmp_path / f"cat-{i}.png" for i in (1, 2, 3)]


def test_an_interrupted_write_leaves_no_result(tmp_path, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt  # Ctrl-C after the bytes, before the rename

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(tmp_path / "cat.png", b"png")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    write_atomically(tmp_path / "cat.png", b"png")
    assert [p.name for p in tmp_path.iterdir()] == ["cat.png"] and (tmp_path / "cat.png").read_bytes() == b"png"
    assert (tmp_path / "cat.png").stat().st_mode & 0o777 == 0o666 & ~_umask()  # as any file the user writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_retry_after_is_read_as_seconds_or_as_a_date():
    assert _retry_after("30") == 30.0 and _retry_after(None) is None and _retry_after("soon") is None
    in_a_minute = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=60), usegmt=True)
    assert 55 < _retry_after(in_a_minute) <= 60
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: now


def test_progress_counts_evaluations_across_jobs_and_estimates_the_rest():
    now = [0.0]
    out = io.StringIO()
    bar = BatchProgress(out, jobs=4, tty=False, every=5, clock=lambda: now[0])
    assert bar.evaluations() == (0, None)  # nothing known yet
    bar.expect("a", 100)
    bar.expect("b", 100)
    now[0] = 10.0
    bar.advance("a", 50)
    bar.advance("b", 50)  # 100 of an estimated 400 after 10 s
    assert bar.evaluations() == (100, 400) and bar.eta() == pytest.approx(30.0)
    bar.job_done("a", True, "a.png -> a.png")
    bar.job_done("b", False, "b.png: job failed")  # a failed job stops counting what it will not run
    assert bar.evaluations() == (150, 350)
    lines = out.getvalue().splitlines()
    assert lines[0] == "progress: 0/4 jobs, 50/400 evaluations, eta 1m10s"  # at most one status line per 5 s
    assert lines[1:] == ["a.png -> a.png  [1/4 jobs, 150/400 evaluations, eta 17s]",
                         "b.png: job failed  [2/4 jobs, 150/350 evaluations, eta 13s]"]


def test_progress_on_a_terminal_is_one_line_with_messages_above_it():
    out = io.StringIO()
    bar = BatchProgress(out, jobs=2, tty=True, width=10)
    bar.expect("a", 10)
    bar.advance("a", 5)
    bar.say("a message")
    bar.close()
    text = out.getvalue()
    assert text.count("\n") == 2 and text.endswith("\n")
    assert "a message\n" in text
    last = text.rstrip("\n").rsplit("\r", 1)[-1]
    assert last.startswith("[##........] 0/2 jobs, 5/20 evaluations")


# ---- against a real service ----------------------------------------------------------------------

def example():
    from service import examples

    return examples.example_for("tiny", 32)


def make_folder(root: Path, names=("alice", "bob", "carol"), masks: bool = True) -> tuple[Path, Path]:
    ex = example()
    photos, mask_dir = root / "photos", root / "masks"
    photos.mkdir(parents=True)
    mask_dir.mkdir()
    for i, name in enumerate(names):
        suffix = ".jpg" if i == 1 else ".png"  # masks are matched whatever the image's extension
        ex.image.save(photos / f"{name}{suffix}", quality=95)
        if masks:
            ex.mask.save(mask_dir / f"{name}.png")
    return photos, mask_dir


def transparent_where_masked(path: Path) -> None:
    """The example image with its mask as transparency: the way to send an image without a mask."""
    ex = example()
    rgba = ex.image.convert("RGBA")
    rgba.putalpha(Image.eval(ex.mask.convert("L"), lambda v: 255 - v))
    rgba.save(path)


def run_batch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("REPAINT_URL", "REPAINT_API_KEY")}
    return subprocess.run([sys.executable, "-m", "service.cli", "submit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def start_batch(log: Path, *args: str) -> subprocess.Popen:
    """The batch as a user at a terminal starts it: SIGINT (Ctrl-C) at its default even when these
    tests run in the background of a script, which starts them with SIGINT ignored (and a process
    keeps an ignored SIGINT ignored, as every Unix tool does)."""
    env = {k: v for k, v in os.environ.items() if k not in ("REPAINT_URL", "REPAINT_API_KEY")}
    return subprocess.Popen([sys.executable, "-m", "service.cli", "submit", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


JOB_KEY = re.compile(rb"^repaint:job:([0-9a-f-]{36})$")


def job_ids(redis) -> set[str]:
    """Every job the service has a record of."""
    return {m.group(1).decode() for key in redis.scan_iter(match="repaint:job:*") if (m := JOB_KEY.match(key))}


def followed(redis, job: str) -> bool:
    """Someone follows the job's event stream: the batch got the answer to its POST, and knows the job id."""
    return dict(redis.pubsub_numsub(events_channel(job))).get(events_channel(job).encode(), 0) > 0


def statuses(url: str, ids) -> dict[str, str]:
    return {i: httpx.get(f"{url}/jobs/{i}").json()["status"] for i in ids}


@pytest.fixture(scope="module")
def service():
    """Redis, the API and one worker of the 32 px test model, shared by the tests that let jobs run."""
    redis = RedisServer().start()
    api = ApiProcess(redis.url)
    worker = WorkerProcess(redis.url, "batch").wait_ready(redis.client())
    yield SimpleNamespace(url=api.url, redis=redis.client())
    worker.stop()
    api.stop()
    redis.stop()


@pytest.fixture()
def idle_service():
    """Redis and an API with no worker: jobs stay queued for as long as a test looks at them."""
    started = []

    def start(**settings: str):
        redis = RedisServer().start()
        api = ApiProcess(redis.url, **settings)
        started.append((api, redis))
        return SimpleNamespace(url=api.url, redis=redis.client(), api=api)

    yield start
    for api, redis in started:
        api.stop()
        redis.stop()


def test_a_folder_is_inpainted_at_most_n_at_a_time_then_a_rerun_skips_it(service, tmp_path):
    photos, masks = make_folder(tmp_path, names=("alice", "bob", "carol", "dave"))
    out = tmp_path / "out"
    # Watch the service while the batch runs: jobs of the batch that are queued or running at once.
    most, seen, stop = [0], set(), threading.Event()

    def watch():
        with httpx.Client(base_url=service.url) as http:
            while not stop.is_set():
                ids = job_ids(service.redis) - seen
                live = [i for i in ids if http.get(f"/jobs/{i}").json()["status"] in ("queued", "running")]
                seen.update(set(ids) - set(live))  # a final job stays final
                most[0] = max(most[0], len(live))
                time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        done = run_batch("--images", str(photos), "--masks", str(masks), "-o", str(out), "--url", service.url,
                         "--concurrency", "2", *CHEAP)
    finally:
        stop.set()
        watcher.join()
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["alice.png", "bob.png", "carol.png", "dave.png"]
    ex = example()
    for path in out.iterdir():
        result = np.asarray(Image.open(path).convert("RGB"), dtype=int)
        assert result.shape == (128, 128, 3)
        far = np.asarray(ex.mask) == 0  # far from the mask the input comes back (alice's PNG bit for bit)
        assert np.abs(result - np.asarray(ex.image, dtype=int))[far].mean() < 3, path.name
    assert len(job_ids(service.redis)) == 4
    assert 1 <= most[0] <= 2, most
    assert "4 with a mask" in done.stderr and "done: 4 result(s) written, 0 skipped, 0 failed" in done.stderr
    assert done.stderr.count(" -> ") == 4  # one line per job: stderr is not a terminal here
    assert "evaluations" in done.stderr

    before = job_ids(service.redis)
    again = run_batch("--images", str(photos), "--masks", str(masks), "-o", str(out), "--url", service.url, *CHEAP)
    assert again.returncode == 0, again.stderr
    assert "skipped 4 already in" in again.stderr and "done: 0 result(s) written, 4 skipped" in again.stderr
    assert job_ids(service.redis) == before  # nothing was submitted


def test_transparency_is_the_mask_and_an_image_with_neither_fails_alone(service, tmp_path):
    photos, masks = make_folder(tmp_path, names=("alice",))
    example().image.save(photos / "plain.png")  # no mask file, no transparency
    transparent_where_masked(photos / "holey.png")  # no mask file: its transparency is the mask
    example().mask.save(masks / "nobody.png")
    out = tmp_path / "out"
    before = job_ids(service.redis)
    done = run_batch("--images", str(photos), "--masks", str(masks), "-o", str(out), "--url", service.url, *CHEAP)
    assert done.returncode == 2, done.stderr  # the service's rule refuses `plain`: exit code of a refusal
    assert sorted(p.name for p in out.iterdir()) == ["alice.png", "holey.png"]
    assert "2 without a mask file" in done.stderr and "holey.png, plain.png" in done.stderr
    assert "1 mask(s) match no image, not used: nobody.png" in done.stderr
    assert done.stderr.rstrip().endswith(
        "failed:\n  plain.png: no mask file, and the service refuses it alone: "
        "send a mask, or an image with transparent pixels to fill"), done.stderr
    assert len(job_ids(service.redis) - before) == 2  # the refusal cost no upload

    # Without a mask folder at all, the same rule.
    alone = tmp_path / "alone"
    alone.mkdir()
    transparent_where_masked(alone / "holey.png")
    done = run_batch("--images", str(alone), "-o", str(tmp_path / "out2"), "--url", service.url,
                     "--output-format", "webp", *CHEAP)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "out2" / "holey.webp").format == "WEBP"


def test_a_refusal_is_listed_for_each_image_with_its_reason(service, tmp_path):
    photos, masks = make_folder(tmp_path, names=("a", "b"))
    done = run_batch("--images", str(photos), "--masks", str(masks), "-o", str(tmp_path / "out"), "--url", service.url,
                     "--sampler", "repaint", "--eta", "0.5")
    assert done.returncode == 2, done.stderr
    why = "refused: HTTP 422: eta is a parameter of sampler ddnm, not of repaint"
    assert f"failed:\n  a.png: {why}\n  b.jpg: {why}" in done.stderr, done.stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_at_most_n_jobs_wait_in_the_queue_and_ctrl_c_cancels_them(idle_service, tmp_path):
    svc = idle_service()
    photos, masks = make_folder(tmp_path, names=("a", "b", "c", "d", "e"))
    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    proc = start_batch(log, "--images", str(photos), "--masks", str(masks), "-o", str(out), "--url", svc.url,
                       "--concurrency", "2", *CHEAP)
    try:
        ids = wait_until(lambda: len(job_ids(svc.redis)) >= 2 and job_ids(svc.redis), 30, "two jobs")
        # No worker: the batch must not submit a third while two wait. The window starts once it
        # follows both jobs (their event streams are open: its two places are taken), and lasts
        # five turns of its loop for a free place (0.2 s each): nothing to await for a "not".
        wait_until(lambda: all(n == 1 for _, n in svc.redis.pubsub_numsub(*map(events_channel, ids))), 30,
                   "the batch to follow both jobs")
        time.sleep(1.0)
        assert job_ids(svc.redis) == ids and len(ids) == 2
        assert set(statuses(svc.url, ids).values()) == {"queued"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert set(statuses(svc.url, ids).values()) == {"canceled"}
    stderr = log.read_text()
    assert "interrupted: 0 result(s) written; canceled 2 job(s) in flight" in stderr, stderr
    assert "Traceback" not in stderr
    assert list(out.iterdir()) == []


def test_a_job_whose_submission_was_on_its_way_at_ctrl_c_is_canceled_and_listed(tmp_path):
    """The answer to POST /inpaint comes after Ctrl-C: the main thread waits for it and cancels that job
    with the others, before it closes the client (a thread left to do it could be cut off by the exit)."""
    answer, calls = threading.Event(), []

    class Client:
        def submit(self, image, mask, **fields):
            answer.wait(10)
            return {"id": "job-1"}

        def cancel(self, job_id):
            calls.append((job_id, threading.current_thread() is threading.main_thread()))
            return {}

    pair = Pair("a", tmp_path / "a.png", tmp_path / "a-mask.png")
    batch = _Batch(Client(), {}, 1, BatchProgress(io.StringIO(), 1, tty=False))
    batch.slots.acquire()
    thread = threading.Thread(target=batch.process, args=(pair, tmp_path / "a.png", [tmp_path / "a.png"]))
    thread.start()
    wait_until(lambda: batch.submitting == 1, 5, "the submission")
    threading.Timer(0.2, answer.set).start()
    assert batch.cancel_in_flight() == ["a.png (job job-1)"]
    assert calls == [("job-1", True)]
    thread.join(5)
    assert not thread.is_alive() and [f.why for f in batch.failures] == ["canceled: interrupted (Ctrl-C)"]


def test_a_full_queue_is_waited_out_not_failed(idle_service, tmp_path):
    svc = idle_service(REPAINT_MAX_QUEUE_LENGTH="1")
    photos, masks = make_folder(tmp_path, names=("a", "b"))
    log = tmp_path / "stderr.txt"
    proc = start_batch(log, "--images", str(photos), "--masks", str(masks), "-o", str(tmp_path / "out"),
                       "--url", svc.url, *CHEAP)
    try:
        wait_until(lambda: "queue is full (HTTP 429): retrying in 30s" in log.read_text(), 30, "a 429")
        [first] = job_ids(svc.redis)
        # The queue has room again once this job leaves it: the waiting image goes in, well before 30 s.
        httpx.delete(f"{svc.url}/jobs/{first}").raise_for_status()
        [second] = wait_until(lambda: job_ids(svc.redis) - {first}, 10, "the retried submission")
        assert statuses(svc.url, [first, second]) == {first: "canceled", second: "queued"}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert statuses(svc.url, [second]) == {second: "canceled"}


def test_a_service_lost_mid_run_stops_the_batch_with_exit_code_3(idle_service, tmp_path):
    svc = idle_service()
    photos, masks = make_folder(tmp_path, names=("a", "b", "c"))
    log = tmp_path / "stderr.txt"
    proc = start_batch(log, "--images", str(photos), "--masks", str(masks), "-o", str(tmp_path / "out"),
                       "--url", svc.url, "--concurrency", "1", *CHEAP)
    try:
        [job] = wait_until(lambda: job_ids(svc.redis), 30, "the first job")
        # Not before the batch has the answer to its POST: killed between storing the job and answering,
        # the API leaves the batch without a job id ("cannot reach the service").
        wait_until(lambda: followed(svc.redis, job), 30, "the batch to follow the job")
        svc.api.proc.kill()  # the API crashes (a graceful stop would wait for the open event stream)
        svc.api.proc.wait()
        assert proc.wait(timeout=30) == 3, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = log.read_text()
    assert f"  a.png: lost the service while following job {job} (GET /jobs/{job} tells how it ended)" in stderr
    assert "  2 image(s) not submitted: the service could not be reached: b.jpg, c.png" in stderr, stderr
    assert job_ids(svc.redis) == {job}


def test_an_unreachable_service_is_exit_code_3_and_nothing_is_written(tmp_path):
    photos, masks = make_folder(tmp_path, names=("a",))
    done = run_batch("--images", str(photos), "--masks", str(masks), "-o", str(tmp_path / "out"),
                     "--url", f"http://127.0.0.1:{free_port()}", *CHEAP)
    assert done.returncode == 3 and "cannot reach http://127.0.0.1:" in done.stderr, done.stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_one_image_and_a_folder_do_not_mix(tmp_path):
    photos, _ = make_folder(tmp_path, names=("a",))
    done = run_batch(str(photos / "a.png"), "--images", str(photos), "-o", str(tmp_path / "out"))
    assert done.returncode == 2 and "give either an IMAGE" in done.stderr and "not both" in done.stderr
    done = run_batch("--images", str(photos), "-o", str(photos))
    assert done.returncode == 2 and "-o must be another folder than --images" in done.stderr


def test_the_batch_command_stays_torch_free(tmp_path):
    photos, masks = make_folder(tmp_path, names=("a",))
    (photos / "b.png").write_bytes(b"")  # an image without a mask: the local check of the service's rule runs
    code = ("import sys; from service import cli\n"
            "try:\n"
            f"    cli.main(['submit', '--images', {str(photos)!r}, '--masks', {str(masks)!r}, '-o', "
            f"{str(tmp_path / 'out')!r}, '--url', 'http://127.0.0.1:{free_port()}'])\n"
            "except SystemExit as e:\n"
            "    assert e.code == 3, e.code\n"
            "from service import batch\n"
            "batch.refusal_without_mask(batch.Path(sys.argv[1]))\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(photos / "b.png")], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
