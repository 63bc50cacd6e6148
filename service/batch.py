"""`repaint submit --images DIR [--masks DIR] -o OUTDIR`: a folder of images, inpainted by a running service.

Three parts, each usable alone:
- `discover` pairs images with masks by file name (no network, no decoding);
- `BatchProgress` keeps one progress line for the whole batch: jobs, network evaluations, ETA;
- `submit_folder` submits the jobs, at most `concurrency` of them queued or running at once, and
  writes each result atomically, so that a rerun skips exactly the results that are complete.

Torch-free, like the rest of the command line.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import httpx

from worker.jobs import JobStatus
from worker.output_formats import DEFAULT as DEFAULT_OUTPUT_FORMAT
from worker.output_formats import OUTPUT_FORMATS

from .exit_codes import EXIT_INTERRUPTED, EXIT_JOB_FAILED, EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE
from .client import ApiError, RepaintClient


# What the service decodes (worker.decoding.ACCEPTED_FORMATS), told apart by extension here.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

DEFAULT_RETRY_AFTER = 10.0  # a 429 without Retry-After
MAX_RETRY_AFTER = 300.0  # a Retry-After far in the future is a misconfigured proxy, not a plan
TRANSPORT_RETRY_DELAYS = (1.0, 2.0)  # a dropped connection is retried twice before the service counts as gone
# After Ctrl-C, how long the jobs in flight get to end (canceled, or their results written when
# they had succeeded) before the summary: a canceled job ends at its next step.
SETTLE_SECONDS = 30.0


# ---- which files go together ------------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    """One image to inpaint: `name` is the file stem that image, mask and result share."""

    name: str
    image: Path
    mask: Path | None  # None: the image's transparent pixels are the region to fill


@dataclass(frozen=True)
class Clash:
    """Several files with one name: which one is meant cannot be told, so none is submitted."""

    label: str  # what the list of failures calls it: the image's file name, or the name the images share
    paths: tuple[Path, ...]
    why: str


@dataclass
class Discovery:
    images: int = 0  # image files found
    pairs: list[Pair] = field(default_factory=list)
    without_mask: list[Path] = field(default_factory=list)  # images with no mask file (a mask folder given)
    unmatched_masks: list[Path] = field(default_factory=list)  # masks whose name matches no image
    clashes: list[Clash] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # files that are not PNG, JPEG or WebP by extension


def _image_files(folder: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """{stem: files} of the images directly in `folder`, and the other files. Hidden files (ours
    being written among them) and subfolders are left out."""
    by_name: dict[str, list[Path]] = {}
    others = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            by_name.setdefault(path.stem, []).append(path)
        else:
            others.append(path)
    return by_name, others


def discover(images: Path, masks: Path | None = None) -> Discovery:
    """Pair each image in `images` with the mask in `masks` of the same stem, whatever the extensions
    (`cat.jpg` takes `cat.png`). Without a mask folder every image is sent alone, its transparency being
    the mask; with one, an image without a mask file is sent alone too, and listed in `without_mask`."""
    found, ignored = _image_files(Path(images))
    mask_files, ignored_masks = _image_files(Path(masks)) if masks is not None else ({}, [])
    out = Discovery(images=sum(len(ps) for ps in found.values()), ignored=ignored + ignored_masks,
                    unmatched_masks=sorted(p for name, ps in mask_files.items() if name not in found for p in ps))
    for name, paths in found.items():
        if len(paths) > 1:
            out.clashes.append(Clash(name, tuple(paths), "several images have this name, and their results "
                                                         "would have one name: rename all but one"))
            continue
        candidates = mask_files.get(name, [])
        if len(candidates) > 1:
            out.clashes.append(Clash(paths[0].name, tuple(candidates), "several masks have this name: keep one"))
            continue
        if masks is not None and not candidates:
            out.without_mask.append(paths[0])
        out.pairs.append(Pair(name, paths[0], candidates[0] if candidates else None))
    return out


def output_paths(base: Path, count: int) -> list[Path]:
    """Where a job's `count` results go: `base` itself for one, else base-1, base-2, ... before the extension.
    The one naming rule of `repaint submit`, for one image and for a folder."""
    return [base] if count == 1 else [base.with_name(f"{base.stem}-{i + 1}{base.suffix}") for i in range(count)]


def write_atomically(path: Path, data: bytes) -> None:
    """Write under a hidden temporary name beside `path`, then rename: `path` exists only complete,
    so a run stopped in the middle leaves nothing that a resume would take for a finished result."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        with open(tmp, "xb") as f:  # not mkstemp: its 0600 mode would stay on the result
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove_leftovers(path: Path) -> None:
    """Temporary files of `path` that a killed run (SIGKILL, power cut) left behind."""
    for tmp in path.parent.glob(f".{path.name}.*.part"):
        with contextlib.suppress(OSError):
            tmp.unlink()


def refusal_without_mask(image: Path) -> str | None:
    """Why the service would refuse `image` sent without a mask, or None. The service's own rule
    (service.uploads.prepare: transparent pixels are the region to fill), run here so that an image
    without either costs no upload and no place in the queue."""
    from fastapi import HTTPException  # only here: fastapi is a second's import that most batches skip

    from .uploads import open_image, prepare

    try:
        # The pixel limit is the service's to apply (it knows its own); here only the rule matters.
        data = image.read_bytes()
        prepare(data, open_image(data, "image", max_pixels=1 << 62), None)
    except HTTPException as exc:
        return f"no mask file, and the service refuses it alone: {exc.detail}"
    return None


# ---- one progress line -------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class BatchProgress:
    """The progress of a whole batch: jobs done/total, network evaluations done/total, and an ETA.

    On a terminal, one line redrawn in place, with messages printed above it. Elsewhere (a pipe, a
    log file, CI), plain lines: one per finished job and, while jobs run, a status line at most every
    `every` seconds. Thread-safe: every job's thread reports here.
    """

    def __init__(self, stream: TextIO, jobs: int, *, tty: bool | None = None, width: int = 30,
                 every: float = 30.0, clock=time.monotonic):
        self.stream, self.jobs, self.width, self.every, self.clock = stream, jobs, width, every, clock
        self.tty = stream.isatty() if tty is None else tty
        self.done_jobs = 0
        self._evaluations: dict[str, list[int]] = {}  # job key -> [total, done]
        self._typical: int | None = None  # evaluations of a job whose total is known: they share settings
        self._lock = threading.RLock()
        self._start = clock()
        self._last_draw = float("-inf")
        self._last_line = clock()
        self._drawn = 0  # length of the bar on screen, 0 when none is
        self.closed = False

    # -- what the jobs report

    def expect(self, key: str, total: int) -> None:
        """A job will run `total` network evaluations (all its samples)."""
        with self._lock:
            entry = self._evaluations.setdefault(key, [total, 0])
            entry[0] = total
            self._typical = total
            self._changed()

    def advance(self, key: str, done: int) -> None:
        with self._lock:
            entry = self._evaluations.setdefault(key, [self._typical or done, 0])
            entry[1] = max(entry[1], min(done, entry[0]))
            self._changed()

    def job_done(self, key: str, ok: bool, line: str) -> None:
        """A job ended: a success counts all of its evaluations, any other end only those it ran."""
        with self._lock:
            entry = self._evaluations.setdefault(key, [0, 0])
            if ok:
                entry[1] = entry[0]
            else:
                entry[0] = entry[1]
            self.done_jobs += 1
            self.say(line if self.tty else f"{line}  [{self.status()}]")

    def say(self, line: str) -> None:
        """A message for the user; on a terminal above the bar, which is then redrawn."""
        with self._lock:
            if self.closed:
                return  # after the summary (threads still ending after Ctrl-C): nothing more
            if self.tty and self._drawn:
                self.stream.write("\r" + " " * self._drawn + "\r")
                self._drawn = 0
            self.stream.write(line + "\n")
            if self.tty:
                self._draw()
            self.stream.flush()

    def close(self) -> None:
        with self._lock:
            if self.tty and self._drawn:
                self._draw()
                self.stream.write("\n")
                self.stream.flush()
            self._drawn = 0
            self.closed = True

    # -- the numbers

    def evaluations(self) -> tuple[int, int | None]:
        """(done, total) network evaluations; jobs not yet submitted count as many as one that was."""
        with self._lock:
            done = sum(d for _, d in self._evaluations.values())
            unknown = self.jobs - len(self._evaluations)
            if unknown and self._typical is None:
                return done, None
            return done, sum(t for t, _ in self._evaluations.values()) + unknown * (self._typical or 0)

    def eta(self) -> float | None:
        """Seconds left at the batch's pace so far (queue waits included: they are part of the pace)."""
        done, total = self.evaluations()
        if total is None or done == 0:
            return None
        return (self.clock() - self._start) / done * (total - done)

    def status(self) -> str:
        done, total = self.evaluations()
        eta = self.eta()
        return (f"{self.done_jobs}/{self.jobs} jobs, {done}/{'?' if total is None else total} evaluations"
                + ("" if eta is None else f", eta {_duration(eta)}"))

    # -- drawing

    def _changed(self) -> None:
        now = self.clock()
        if self.closed:
            return
        if self.tty:
            if now - self._last_draw >= 0.1:  # a redraw per event would flood a slow terminal
                self._draw()
                self.stream.flush()
        elif now - self._last_line >= self.every:
            self._last_line = now
            self.stream.write(f"progress: {self.status()}\n")
            self.stream.flush()

    def _draw(self) -> None:
        done, total = self.evaluations()
        fraction = done / total if total else self.done_jobs / max(self.jobs, 1)
        filled = int(self.width * min(fraction, 1.0))
        text = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.status()}"
        self.stream.write("\r" + text.ljust(self._drawn))
        self._drawn = len(text)
        self._last_draw = self.clock()


# ---- the run -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Failure:
    name: str  # the image's file name
    code: int  # the exit code it calls for
    why: str


class _Halt(Exception):
    """This image was not submitted: the run is stopping (Ctrl-C, or the service is gone)."""

    def __init__(self, why: str, code: int):
        super().__init__(why)
        self.code = code


class _Batch:
    """The jobs of one run: at most `concurrency` threads, each following one image from upload to result."""

    def __init__(self, client: RepaintClient, fields: dict, concurrency: int, progress: BatchProgress):
        self.client, self.fields, self.progress = client, fields, progress
        self.slots = threading.BoundedSemaphore(concurrency)
        self.lock = threading.Lock()
        # Notified when one of this run's jobs ends, when a submission returns, and when the run stops.
        self.changed = threading.Condition(self.lock)
        self.stopping: str | None = None  # why nothing new is submitted (Ctrl-C, service gone)
        self.stop_code = EXIT_UNREACHABLE  # what an image left unsubmitted counts as
        self.in_flight: dict[str, str] = {}  # job id -> image file name
        self.submitting = 0  # threads inside POST /inpaint: their job id is not known yet
        self.swept = False  # after Ctrl-C, the main thread took the jobs it cancels: later ones cancel themselves
        self.ended = 0  # jobs of this run that ended: each may have freed a place in the queue
        self.upload = threading.Lock()
        self.failures: list[Failure] = []
        self.written: list[Path] = []
        self.succeeded: set[str] = set()  # jobs of this run the service says succeeded
        self.asked_to_cancel: dict[str, str] = {}  # job id -> image file name, after Ctrl-C
        self.threads: list[threading.Thread] = []

    def stop(self, why: str, code: int) -> None:
        with self.changed:
            if self.stopping is None:
                self.stopping, self.stop_code = why, code
            self.changed.notify_all()

    def fail(self, pair: Pair, code: int, why: str, shown: bool = True) -> None:
        """Record a failure; `shown`: also as this job's line under the progress bar."""
        with self.lock:
            self.failures.append(Failure(pair.image.name, code, why))
        if shown:
            self.progress.job_done(pair.name, False, f"{pair.image.name}: {why}")

    # -- one image, in its own thread

    def process(self, pair: Pair, base: Path, outputs: list[Path]) -> None:
        job_id = None
        try:
            if pair.mask is None:
                why = refusal_without_mask(pair.image)
                if why is not None:
                    self.fail(pair, EXIT_REFUSED, why)
                    return
            job_id = self._submit(pair)
            params = _retrying(lambda: self.client.job(job_id))["params"]
            samples = int(params.get("num_samples", 1))
            known = "evaluations_per_sample" in params
            if known:
                self.progress.expect(pair.name, params["evaluations_per_sample"] * samples)

            def on_event(event: str, data: dict) -> None:
                nonlocal known
                # `step` and `total` count the evaluations of one sample: a job's samples advance together.
                if event == "progress" and data.get("step") is not None:
                    if not known and data.get("total"):  # a service whose params lack the count
                        known = True
                        self.progress.expect(pair.name, data["total"] * samples)
                    self.progress.advance(pair.name, data["step"] * samples)

            final = _retrying(lambda: self.client.wait(job_id, on_event=on_event))
            if final["status"] == JobStatus.SUCCEEDED:
                with self.lock:
                    self.succeeded.add(job_id)
            elif final["status"] == JobStatus.CANCELED and self.stopping:
                raise _Halt(f"canceled: {self.stopping}", self.stop_code)
            if final["status"] != JobStatus.SUCCEEDED:
                error = (final.get("error") or {}).get("message") or "no reason given"
                self.fail(pair, EXIT_JOB_FAILED, f"job {job_id} {final['status']}: {error}")
                return
            count = len(final["links"]["results"])
            if count != len(outputs):  # the service's default num_samples was not 1
                outputs = output_paths(base, count)
            for index, path in enumerate(outputs):
                write_atomically(path, _retrying(lambda: self.client.result(job_id, index)))
                with self.lock:
                    self.written.append(path)
            self.progress.job_done(pair.name, True, f"{pair.image.name} -> {', '.join(p.name for p in outputs)}")
        except _Halt as halt:
            self.fail(pair, halt.code, str(halt), shown=False)  # the run is stopping: the summary says it
        except ApiError as exc:
            self.fail(pair, EXIT_REFUSED, f"refused: {exc}")
        except httpx.HTTPError as exc:
            where = (f"lost the service while following job {job_id} (GET /jobs/{job_id} tells how it ended)"
                     if job_id else "cannot reach the service")
            self.fail(pair, EXIT_UNREACHABLE, f"{where}: {type(exc).__name__}: {exc}")
            self.stop("the service could not be reached", EXIT_UNREACHABLE)
        except OSError as exc:
            self.fail(pair, EXIT_JOB_FAILED, f"cannot read or write a file: {exc}")
        except Exception as exc:
            if not self.swept:
                raise
            # After Ctrl-C the main thread closes the client under the threads still following their jobs
            # (RuntimeError: the client has been closed): the run is over, and its summary says how.
            self.fail(pair, self.stop_code, f"stopped: {type(exc).__name__}: {exc}", shown=False)
        finally:
            with self.changed:
                if job_id is not None:
                    self.in_flight.pop(job_id, None)
                    self.ended += 1
                self.changed.notify_all()
            self.slots.release()

    def _submit(self, pair: Pair) -> str:
        """POST /inpaint until the service takes the job: a full queue (429) is waited out, never
        a failure. Returns the job id; raises _Halt when the run stops first."""
        # One key for every retry of this image: a POST whose answer was lost is not queued twice.
        key = f"repaint-batch-{secrets.token_hex(12)}"  # not the file name: headers are ASCII
        told = False
        while True:
            with self.changed:
                if self.stopping:
                    raise _Halt(f"not submitted: {self.stopping}", self.stop_code)
                self.submitting += 1
                ended = self.ended
            job_id, wait = None, None
            try:
                # One upload at a time: uploads share the link anyway, and so the service's queue-length
                # check sees each job of this batch before the next one arrives.
                with self.upload:
                    if not self.stopping:
                        job_id = _retrying(lambda: self.client.submit(pair.image, pair.mask, idempotency_key=key,
                                                                      **self.fields))["id"]
            except ApiError as exc:
                if exc.status != 429:
                    raise
                wait = min(MAX_RETRY_AFTER, DEFAULT_RETRY_AFTER if exc.retry_after is None else exc.retry_after)
                if not told:
                    told = True
                    self.progress.say(f"{pair.image.name}: the service's queue is full (HTTP 429): retrying in "
                                      f"{wait:.0f}s, or sooner when a job of this batch ends")
            finally:
                with self.changed:
                    self.submitting -= 1
                    stopped = self.stopping
                    # Ctrl-C came while this POST was on its way: the main thread, which waits for it, cancels
                    # the job with the others, unless it has stopped waiting; then this thread does.
                    mine = stopped and self.swept
                    if job_id is not None and not mine:
                        self.in_flight[job_id] = pair.image.name
                    self.changed.notify_all()
            if job_id is not None and stopped:
                if mine:
                    with contextlib.suppress(httpx.HTTPError, ApiError, RuntimeError):  # RuntimeError: closed
                        self.client.cancel(job_id)
                raise _Halt(f"canceled: {stopped}", self.stop_code)
            if job_id is not None:
                return job_id
            if wait is not None:
                with self.changed:
                    # A job of this batch ending frees a place in a queue this batch fills: retry then.
                    self.changed.wait_for(lambda: self.ended != ended or self.stopping, timeout=wait)

    # -- the main thread

    def run(self, todo: list[tuple[Pair, Path, list[Path]]]) -> bool:
        """Submit everything, at most `concurrency` at a time; False when stopped by Ctrl-C."""
        threads = []
        try:
            for pair, base, outputs in todo:
                while not self.slots.acquire(timeout=0.2):  # with a timeout: Ctrl-C is seen at once
                    pass
                if self.stopping:
                    self.slots.release()
                    self.fail(pair, self.stop_code, f"not submitted: {self.stopping}", shown=False)
                    continue
                thread = threading.Thread(target=self.process, args=(pair, base, outputs), daemon=True,
                                          name=f"repaint-batch-{pair.name}")
                thread.start()
                threads.append(thread)
                self.threads.append(thread)
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
            return True
        except KeyboardInterrupt:
            return False

    def cancel_in_flight(self) -> list[str]:
        """After Ctrl-C: cancel every job of this run that is queued or running; the names of their
        images. A job that had already succeeded is not canceled (the service leaves it as it is):
        its thread writes its results, and it is not listed."""
        canceled = []
        try:
            self.stop("interrupted (Ctrl-C)", EXIT_INTERRUPTED)
            with self.changed:
                # A POST on its way has no job id yet: wait for its answer, so that its job is canceled here
                # too, before the client closes. One that takes longer cancels its job itself.
                self.changed.wait_for(lambda: self.submitting == 0, timeout=10)
                self.swept = True
                jobs = dict(self.in_flight)
            for job_id, name in jobs.items():
                with contextlib.suppress(httpx.HTTPError, ApiError):
                    answer = self.client.cancel(job_id)
                    if answer.get("status") != JobStatus.SUCCEEDED:
                        self.asked_to_cancel[job_id] = name
                        canceled.append(f"{name} (job {job_id})")
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: leave now, with what was canceled so far
        return canceled

    def settle(self, grace: float) -> list[str]:
        """After the cancels: give each thread up to `grace` seconds to see how its job ended (a queued
        one is canceled at once, a running one at its next step, one that succeeded meanwhile has its
        results written), so the summary tells what happened. The names of the jobs canceled in the
        end; a second Ctrl-C stops waiting."""
        deadline = time.monotonic() + grace
        with contextlib.suppress(KeyboardInterrupt):
            for thread in self.threads:
                while thread.is_alive() and time.monotonic() < deadline:
                    thread.join(0.2)
        with self.lock:
            return [f"{name} (job {job_id})" for job_id, name in self.asked_to_cancel.items()
                    if job_id not in self.succeeded]


def _retrying(call):
    """`call()`, again after a dropped connection or timeout (TRANSPORT_RETRY_DELAYS); not after a refusal."""
    for delay in TRANSPORT_RETRY_DELAYS:
        try:
            return call()
        except httpx.TransportError:
            time.sleep(delay)
    return call()


def _names(paths, limit: int = 20) -> str:
    names = [p.name for p in paths]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def submit_folder(images: Path, masks: Path | None, out_dir: Path, fields: dict, *, url: str,
                  api_key: str | None, concurrency: int, stream: TextIO) -> int:
    """Inpaint every image of `images` with the service at `url`; the results go to `out_dir`.
    Returns the exit code: 0 when everything was written or already there, else the largest code
    of the failures (1 a job failed, 2 the service refused, 3 it could not be reached), 130 on Ctrl-C."""
    def say(line: str = "") -> None:
        stream.write(line + "\n")
        stream.flush()

    found = discover(images, masks)
    say(f"{found.images} image(s) in {images}")
    if masks is None:
        say("  no mask folder: each image's transparent pixels are the region to fill")
    else:
        say(f"  {len(found.pairs) - len(found.without_mask)} with a mask in {masks}")
        if found.without_mask:
            say(f"  {len(found.without_mask)} without a mask file, sent alone (their transparent pixels are "
                f"the region to fill): {_names(found.without_mask)}")
        if found.unmatched_masks:
            say(f"  {len(found.unmatched_masks)} mask(s) match no image, not used: {_names(found.unmatched_masks)}")
    if found.ignored:
        say(f"  {len(found.ignored)} file(s) not PNG, JPEG or WebP, left out: {_names(found.ignored)}")

    failures = [Failure(c.label, EXIT_JOB_FAILED, f"{c.why} ({_names(c.paths)})") for c in found.clashes]
    suffix = OUTPUT_FORMATS[fields.get("output_format") or DEFAULT_OUTPUT_FORMAT].suffix
    samples = fields.get("num_samples") or 1
    todo, skipped = [], 0
    for pair in found.pairs:
        base = out_dir / f"{pair.name}{suffix}"
        outputs = output_paths(base, samples)
        if all(p.exists() for p in outputs):
            skipped += 1
            continue
        for path in outputs:
            remove_leftovers(path)
        todo.append((pair, base, outputs))
    if skipped:
        say(f"skipped {skipped} already in {out_dir} (delete a result to make it again)")

    batch = None
    interrupted, canceled = False, []
    if todo:
        with RepaintClient(url, api_key=api_key) as client:
            try:
                listing = client.models()  # is the service there, does it take our key: one clear answer, not one per image
            except KeyboardInterrupt:
                say("interrupted: nothing was submitted")
                return EXIT_INTERRUPTED
            except ApiError as exc:
                say(f"refused by {url}: {exc}")
                return EXIT_REFUSED
            except httpx.HTTPError as exc:
                say(f"cannot reach {url}: {type(exc).__name__}: {exc}")
                return EXIT_UNREACHABLE
            model = fields.get("model") or listing.get("default")
            broken = (listing.get("unavailable") or {}).get(model)
            if broken is not None:  # every job would be refused with this: say it once
                say(f"refused by {url}: {broken['reason']}")
                return EXIT_REFUSED
            say(f"submitting {len(todo)} job(s) to {url}, at most {concurrency} at a time; results in {out_dir}")
            progress = BatchProgress(stream, len(todo))
            batch = _Batch(client, fields, concurrency, progress)
            interrupted = not batch.run(todo)
            if interrupted:
                batch.cancel_in_flight()
                canceled = batch.settle(SETTLE_SECONDS)
            progress.close()
        failures += batch.failures

    written = len(batch.written) if batch else 0
    if interrupted:
        say(f"interrupted: {written} result(s) written; canceled {len(canceled)} job(s) in flight"
            + (f": {', '.join(canceled)}" if canceled else "") + ". Run the same command again to go on.")
        return EXIT_INTERRUPTED
    say(f"done: {written} result(s) written, {skipped} skipped, {len(failures)} failed")
    if failures:
        say("failed:")
        unsent = {}  # one line for the images a stopped run never sent, however many
        for failure in sorted(failures, key=lambda f: f.name):
            if failure.why.startswith("not submitted"):
                unsent.setdefault(failure.why, []).append(Path(failure.name))
            else:
                say(f"  {failure.name}: {failure.why}")
        for why, names in unsent.items():
            say(f"  {len(names)} image(s) {why}: {_names(names)}")
        return max(f.code for f in failures)
    return EXIT_OK
