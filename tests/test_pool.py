"""RayPool: results, routing, retries and errors on a local 2-CPU Ray cluster (skipped when ray is absent).

One ``ray.init`` for the whole file. A tiny in-test backend (``FakeBackend``) checks the pool's own logic in
milliseconds per job; the engine tests run the real Engine on the tiny demo checkpoint and compare pixels.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid

import pytest

from comfykit.errors import ComfykitError, ExecutionError, ServerError, ValidationError
from comfykit.events import Event, LazyPreview
from comfykit.job import Backend, Job
from comfykit.pool import PoolResult, apply_overrides, gpu_share, models_of, pick_task
from comfykit.result import Result

# ---------------------------------------------------------------------------------------------------------------
# Pure helpers: no Ray needed
# ---------------------------------------------------------------------------------------------------------------


def api_prompt(seed: int = 0, ckpt: str = "a.safetensors", cls: str = "KSampler", delay: float = 0.0) -> dict:
    """A small API-format prompt: loader -> sampler (-> image); ``delay`` makes FakeBackend slow."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": cls, "inputs": {"model": ["1", 0], "seed": seed, "steps": 3, "delay": delay}},
    }


class Ref:
    """Stands in for the graph layer's InputRef (``.node`` with an ``.id``, ``.name``)."""

    def __init__(self, node_id, name):
        self.node = type("N", (), {"id": node_id})()
        self.name = name


def test_overrides_set_inputs_by_ref_tuple_or_string():
    base = api_prompt(seed=0)
    out = apply_overrides(base, {Ref("2", "seed"): 7, ("2", "steps"): 9, "1.ckpt_name": "b.safetensors"})
    assert out["2"]["inputs"]["seed"] == 7 and out["2"]["inputs"]["steps"] == 9
    assert out["1"]["inputs"]["ckpt_name"] == "b.safetensors"
    assert base["2"]["inputs"]["seed"] == 0  # the original is untouched


def test_overrides_name_the_bad_node_or_input():
    with pytest.raises(ValueError, match="node '9' is not in the workflow"):
        apply_overrides(api_prompt(), {("9", "seed"): 1})
    with pytest.raises(ValueError, match="has no input 'sed'.*seed"):
        apply_overrides(api_prompt(), {"2.sed": 1})
    with pytest.raises(TypeError, match="not an input reference"):
        apply_overrides(api_prompt(), {42: 1})


def test_models_of_collects_checkpoint_names():
    prompt = api_prompt(ckpt="x.safetensors")
    prompt["3"] = {"class_type": "LoraLoader", "inputs": {"lora_name": "l.safetensors", "model": ["1", 0]}}
    assert models_of(prompt) == {"x.safetensors", "l.safetensors"}


class T:
    def __init__(self, *models):
        self.models = frozenset(models)


def test_routing_prefers_a_worker_that_holds_the_model():
    pending = [T("a"), T("b"), T("a")]
    assert pick_task(pending, frozenset({"b"}), [frozenset({"a"})]) == 1  # b is loaded here
    assert pick_task(pending, frozenset({"c"}), [frozenset({"a"})]) == 1  # leave 'a' jobs to the 'a' worker
    assert pick_task([T("a")], frozenset({"c"}), [frozenset({"a"})]) == 0  # but never idle
    assert pick_task([], frozenset(), []) is None


def test_gpus_per_worker_never_blocks_a_machine_without_gpus():
    assert gpu_share(None, 0, 4) == 0 and gpu_share(1, 0, 4) == 0  # CPU-only: run anyway
    assert gpu_share(None, 2, 4) == 0.5 and gpu_share(None, 8, 4) == 1.0
    assert gpu_share(0.25, 1, 4) == 0.25


def test_worker_errors_cross_as_raised_or_as_a_lost_worker():
    from comfykit.pool.worker import portable_error

    invalid = ValidationError("bad", {"type": "invalid_prompt", "message": "bad", "details": "", "extra_info": {}})
    assert portable_error(invalid) is invalid  # comfykit errors pickle with their data: sent as they are
    for gone in (ConnectionResetError("reset"), ServerError("server died")):
        lost = portable_error(gone, "worker-0")
        assert type(lost) is ServerError and "worker-0" in str(lost)
    requests = pytest.importorskip("requests")
    assert type(portable_error(requests.ConnectionError("refused"))) is ServerError
    other = portable_error(KeyError("k"), "worker-1")
    assert type(other) is KeyError and "remote traceback" in "".join(other.__notes__)

    class Local(Exception):  # not importable by the driver: its words travel instead
        pass

    odd = portable_error(Local("strange"), "worker-1")
    assert type(odd) is ComfykitError and "Local on worker worker-1: strange" in str(odd)


def test_ray_pool_lives_in_its_own_module():
    import comfykit as ck
    from comfykit.pool import raypool

    assert ck.RayPool is raypool.RayPool and ck.RayPool.__module__ == "comfykit.pool.raypool"


# ---------------------------------------------------------------------------------------------------------------
# A fake backend: same contract as Engine, models "loaded" once, deterministic images from the seed
# ---------------------------------------------------------------------------------------------------------------
class FakeBackend(Backend):
    """Emits ComfyUI's events, keeps its 'checkpoint' loaded, makes a 4x4 image from the seed."""

    def __init__(self, tag: str = "fake"):
        self.tag = tag
        self.loaded: str | None = None
        self._stop = threading.Event()

    def submit(self, workflow, *, on_event=None, previews=None, **options):
        prompt = workflow
        pid = str(uuid.uuid4())
        job = Job(pid, [on_event], interrupt=self.interrupt)
        self.previews = previews
        if any(n["class_type"] not in ("CheckpointLoaderSimple", "KSampler", "Boom") for n in prompt.values()):
            bad = {k: n["class_type"] for k, n in prompt.items()}
            raise ValidationError(f"unknown node type in {bad}", node_errors={"2": {"errors": [],
                                                                                    "class_type": "Nope"}})
        self._stop.clear()
        threading.Thread(target=self._run, args=(job, prompt), daemon=True).start()
        return job

    def _run(self, job, prompt):
        from PIL import Image

        job.emit(Event("execution_start", {"prompt_id": job.prompt_id}))
        executed = []
        ckpt = prompt["1"]["inputs"]["ckpt_name"]
        if ckpt != self.loaded:
            self.loaded = ckpt
            executed.append("1")
        inputs = prompt["2"]["inputs"]
        for step in range(inputs["steps"]):
            if self._stop.is_set():
                data = {"prompt_id": job.prompt_id, "node_id": "2", "node_type": "KSampler", "executed": executed}
                job.emit(Event("execution_interrupted", data))
                from comfykit.errors import InterruptedError

                job.finish(None, InterruptedError(data))
                return
            time.sleep(inputs.get("delay", 0))
            # like the engine: a step preview only when the pool said someone listens
            preview = LazyPreview(bytes([step * 40 % 256] * 12), (2, 2), (4, 4)) if self.previews else None
            job.emit(Event("progress", {"value": step + 1, "max": inputs["steps"], "prompt_id": job.prompt_id,
                                        "node": "2"}, preview=preview))
        if prompt["2"]["class_type"] == "Boom":
            data = {"prompt_id": job.prompt_id, "node_id": "2", "node_type": "Boom", "executed": executed,
                    "exception_message": "boom", "exception_type": "RuntimeError", "traceback": []}
            job.emit(Event("execution_error", data))
            job.finish(Result(job.prompt_id, prompt, status="error"), ExecutionError(data))
            return
        executed.append("2")
        seed = inputs["seed"]
        image = Image.new("RGB", (4, 4), (seed % 256, (seed * 7) % 256, len(self.tag)))
        result = Result(job.prompt_id, prompt, outputs={"2": {"images": []}}, images_by_node={"2": [image]},
                        executed=executed, cached=[] if "1" in executed else ["1"])
        job.emit(Event("execution_success", {"prompt_id": job.prompt_id}))
        job.finish(result)

    def interrupt(self):
        self._stop.set()

    def free(self, unload_models=True, free_memory=True):
        self.loaded = None

    def object_info(self):
        return {"KSampler": {"name": "KSampler"}}


# ---------------------------------------------------------------------------------------------------------------
# Ray fixtures: one local cluster for the file
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    cloudpickle = pytest.importorskip("ray.cloudpickle")

    # the workers cannot import this test file: ship FakeBackend by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    os.environ["RAY_DEDUP_LOGS"] = "0"
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def fake_pool(ray_cluster):
    from comfykit.pool import RayPool

    # a fake worker does no real work: let it take no CPU slot so the engine pool can have them
    pool = RayPool(workers=2, backend=FakeBackend, cpus_per_worker=0, tag="fake")
    yield pool
    pool.shutdown()


pytestmark = pytest.mark.ray


def test_run_many_streams_every_result_tagged_with_index_and_overrides(fake_pool, capsys):
    overrides = [{("2", "seed"): s} for s in range(12)]
    got = list(fake_pool.run_many(api_prompt(), overrides=overrides, progress=True))
    assert sorted(r.index for r in got) == list(range(12))
    for r in got:
        assert isinstance(r, PoolResult) and r.ok and r.overrides == overrides[r.index]
        assert r.image.getpixel((0, 0))[:2] == (r.index % 256, (r.index * 7) % 256)
        assert r.worker in {"worker-0", "worker-1"}
    assert "12/12" in capsys.readouterr().err  # one progress bar over all jobs


def test_ordered_map_yields_in_input_order(fake_pool):
    prompts = [api_prompt(seed=s, delay=0.02 * (s % 3)) for s in range(6)]
    assert [r.index for r in fake_pool.map(prompts, ordered=True, progress=False)] == list(range(6))


def test_previews_cross_only_for_a_listening_job(fake_pool):
    seen = []
    assert fake_pool.submit(api_prompt(seed=5), on_event=seen.append).result(timeout=60).ok
    sizes = [e.preview.size for e in seen if e.type == "progress" and e.has_preview]
    assert sizes == [(4, 4)] * 3  # sent as raw bytes, made a PIL image here
    quiet = fake_pool.submit(api_prompt(seed=6))  # nobody listened while it ran: its events came without
    assert quiet.result(timeout=60).ok
    progress = [e for e in quiet if e.type == "progress"]
    assert len(progress) == 3 and not any(e.has_preview for e in progress)


def test_submit_forwards_events_under_the_pool_prompt_id(fake_pool):
    seen = []
    job = fake_pool.submit(api_prompt(seed=3), on_event=seen.append)
    events = list(job)
    result = job.result(timeout=60)
    assert [e.type for e in events] == ["execution_start", "progress", "progress", "progress", "execution_success"]
    assert all(e.prompt_id == job.prompt_id for e in events) and result.prompt_id == job.prompt_id
    assert [e.type for e in seen] == [e.type for e in events]
    assert fake_pool.run(api_prompt(seed=5)).image.getpixel((0, 0))[0] == 5


def test_a_bad_workflow_fails_alone(fake_pool):
    prompts = [api_prompt(seed=s) for s in range(4)]
    prompts[1] = api_prompt(cls="Nope")
    prompts[2] = api_prompt(cls="Boom")
    got = {r.index: r for r in fake_pool.map(prompts, return_exceptions=True, progress=False)}
    assert got[0].ok and got[3].ok
    assert isinstance(got[1].error, ValidationError) and got[1].attempts == 1  # no retry
    assert got[1].error.node_errors["2"]["class_type"] == "Nope"  # ComfyUI's body survives the trip
    assert isinstance(got[2].error, ExecutionError) and got[2].error.exception_message == "boom"
    with pytest.raises(ValidationError):
        list(fake_pool.map(prompts[:2], progress=False))
    failing = fake_pool.submit(prompts[2])
    assert [e.type for e in failing][-2:] == ["progress", "execution_error"]  # one terminal event, no duplicate

    import comfykit as ck

    unfinished = ck.Workflow()
    unfinished.PreviewImage()  # its required 'images' input is missing: the graph layer refuses to compile it
    got = {r.index: r for r in fake_pool.map([prompts[0], unfinished], return_exceptions=True, progress=False)}
    assert got[0].ok and isinstance(got[1].error, ValidationError) and "images" in str(got[1].error)


def test_jobs_sharing_a_checkpoint_stay_on_the_worker_that_loaded_it(fake_pool):
    prompts = [api_prompt(seed=s, ckpt="a.safetensors" if s % 2 else "b.safetensors", delay=0.01)
               for s in range(16)]
    before = {row["name"]: dict(row["loads"]) for row in fake_pool.stats()}
    list(fake_pool.map(prompts, progress=False))
    after = {row["name"]: row["loads"] for row in fake_pool.stats()}
    new_loads = sum(after[w].get(c, 0) - before[w].get(c, 0) for w in after for c in after[w])
    # 16 jobs over 2 checkpoints and 2 workers: each worker settles on one checkpoint instead of swapping
    assert new_loads <= 4


def test_interrupt_stops_one_job_or_the_whole_pool(fake_pool):
    from comfykit.errors import InterruptedError

    jobs = [fake_pool.submit(api_prompt(seed=s, delay=0.5)) for s in range(5)]
    next(iter(jobs[0]))  # wait until something runs
    jobs[0].interrupt()  # running: stopped on its worker
    jobs[4].interrupt()  # queued: never starts
    for job in (jobs[0], jobs[4]):
        with pytest.raises(InterruptedError):
            job.result(timeout=60)
    fake_pool.interrupt()
    for job in jobs[1:4]:
        with pytest.raises(InterruptedError):
            job.result(timeout=60)
    assert fake_pool.run(api_prompt(seed=1)).ok  # the pool keeps working afterwards


def long_prompt(seed: int, delay: float) -> dict:
    """A job of 20 steps: a worker killed at its first step is still running it when the kill lands, however
    loaded the machine (3 steps left too little time: the job could end first, and nothing was retried)."""
    prompt = api_prompt(seed=seed, delay=delay)
    prompt["2"]["inputs"]["steps"] = 20
    return prompt


def kill_and_wait(ray, actor, timeout: float = 60) -> None:
    """ray.kill returns at once; wait until the actor is really gone, so the next job cannot still run on it."""
    ray.kill(actor)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get(actor.info.remote(), timeout=timeout)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError(f"actor {actor} still answers {timeout}s after ray.kill")


def test_a_killed_worker_has_its_job_retried_elsewhere(ray_cluster):
    from comfykit.pool import RayPool

    with RayPool(workers=2, backend=FakeBackend, cpus_per_worker=0) as pool:
        killed = []

        def kill_mid_job(event):
            # the long job is at its first step on this worker: kill the worker under it
            if event.type == "progress" and event.data["max"] == 20 and not killed:
                killed.append(next(w for w, pid in pool.running().items() if pid == event.prompt_id))
                ray_cluster.kill(pool.workers[killed[0]])

        prompts = [long_prompt(0, 0.15)] + [api_prompt(seed=s, delay=0.15) for s in range(1, 6)]
        got = list(pool.map(prompts, progress=False, on_event=kill_mid_job))
        assert killed
        assert sorted(r.index for r in got) == list(range(6)) and all(r.ok for r in got)
        retried = [r for r in got if r.attempts == 2]
        assert [r.index for r in retried] == [0] and retried[0].worker != killed[0]  # it ran elsewhere
        assert [row["alive"] for row in pool.stats()].count(True) == 1
        kill_and_wait(ray_cluster, pool.actors[0])
        with pytest.raises(ServerError, match="every worker"):
            pool.run(api_prompt(seed=1), timeout=60)


def test_a_dead_worker_is_replaced_when_restarts_are_allowed(ray_cluster):
    from comfykit.pool import RayPool

    with RayPool(workers=1, backend=FakeBackend, cpus_per_worker=0, restart_workers=1) as pool:
        first_actor = pool.workers["worker-0"]
        killed = []

        def kill_mid_job(event):
            if event.type == "progress" and event.data["max"] == 20 and not killed:
                killed.append(event.prompt_id)
                ray_cluster.kill(first_actor)

        prompts = [api_prompt(seed=0, delay=0.1), long_prompt(1, 0.1), api_prompt(seed=2, delay=0.1)]
        got = list(pool.map(prompts, progress=False, on_event=kill_mid_job))
        assert killed
        assert sorted(r.index for r in got) == [0, 1, 2] and all(r.ok for r in got)
        assert [r.attempts for r in sorted(got, key=lambda r: r.index)] == [1, 2, 1]  # only the killed job twice
        (row,) = pool.stats()
        assert row["alive"] and row["restarts"] == 1 and pool.workers["worker-0"] != first_actor
        assert row["jobs"] == 3 and row["busy"] is False


def test_a_replaced_worker_leaves_its_requeued_job_to_another_worker(ray_cluster):
    from comfykit.pool import RayPool

    # two workers: the idle one takes the requeued job at once, while the dead one's thread starts a replacement
    with RayPool(workers=2, backend=FakeBackend, cpus_per_worker=0, restart_workers=1) as pool:
        killed = []

        def kill_mid_job(event):
            if event.type == "progress" and event.data["max"] == 20 and not killed:
                killed.append(next(w for w, pid in pool.running().items() if pid == event.prompt_id))
                ray_cluster.kill(pool.workers[killed[0]])

        prompts = [long_prompt(0, 0.05), api_prompt(seed=1, delay=0.05)]
        got = {r.index: r for r in pool.map(prompts, progress=False, on_event=kill_mid_job,
                                             return_exceptions=True)}
        assert killed and got[0].error is None and got[0].ok and got[0].attempts == 2 and got[1].ok
        # the replacement starts in the dead worker's thread, maybe after the batch ended: give it time
        deadline = time.monotonic() + 120
        while True:
            rows = {row["name"]: row for row in pool.stats()}
            if rows[killed[0]]["restarts"] == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert all(row["alive"] for row in rows.values()) and rows[killed[0]]["restarts"] == 1


def test_bad_pool_arguments_are_refused(ray_cluster):
    from comfykit.pool import RayPool

    with pytest.raises(TypeError, match="not a live instance"):
        RayPool(workers=1, backend=FakeBackend())
    with pytest.raises(TypeError, match="either servers"):
        RayPool(servers=["http://x:8188"], backend=FakeBackend)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        RayPool(workers=0, backend=FakeBackend)
    with pytest.raises(ValueError, match="servers=\\[\\] is empty"):
        RayPool(servers=[])
    with pytest.raises(ComfykitError, match="failed to start"):
        RayPool(workers=1, backend=FakeBackend, cpus_per_worker=0, no_such_option=1)


# ---------------------------------------------------------------------------------------------------------------
# The real Engine on the tiny demo checkpoint: 2 workers against one in-process engine
# ---------------------------------------------------------------------------------------------------------------
def txt2img(ckpt: str):
    """A 64x64, 2-step text-to-image Workflow; returns (workflow, sampler node)."""
    import comfykit as ck

    wf = ck.Workflow()
    loader = wf.CheckpointLoaderSimple(ckpt_name=ckpt)
    pos = wf.CLIPTextEncode(text="a lighthouse at dusk", clip=loader.CLIP)
    neg = wf.CLIPTextEncode(text="", clip=loader.CLIP)
    latent = wf.EmptyLatentImage(width=64, height=64, batch_size=1)
    sampler = wf.KSampler(model=loader.MODEL, positive=pos, negative=neg, latent_image=latent, seed=0, steps=2,
                          cfg=7.0, sampler_name="euler", scheduler="normal")
    wf.PreviewImage(images=wf.VAEDecode(samples=sampler, vae=loader.VAE))
    return wf, sampler


@pytest.fixture(scope="module")
def demo_ckpt(models_dir):
    from comfykit import demo

    return demo.ensure_demo_checkpoint(models_dir)


@pytest.fixture(scope="module")
def engine_options(models_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pool-out")
    return {"models_dir": str(models_dir), "output_dir": str(out / "output"), "temp_dir": str(out / "temp"),
            "previews": "none"}


@pytest.fixture(scope="module")
def engine_pool(ray_cluster, engine_options, demo_ckpt):
    from comfykit.engine import Engine
    from comfykit.pool import RayPool

    pool = RayPool(workers=2, backend=Engine, **engine_options)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def reference_pixels(engine_options, demo_ckpt):
    """seed -> pixels of the same job run on one in-process Engine."""
    import numpy as np
    import torch

    from comfykit.engine import Engine

    # Ray runs a 1-CPU worker with one torch thread; other thread counts sum floats in another order and may
    # move a pixel by one level, so the reference uses one thread too
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine = Engine(**engine_options)
        wf, sampler = txt2img(demo_ckpt)
        pixels = {}
        for seed in range(4):
            sampler.seed = seed
            pixels[seed] = np.asarray(engine.run(wf, timeout=300).image)
        engine.shutdown()
    finally:
        torch.set_num_threads(threads)
    return pixels


def test_engine_pool_gives_the_same_pixels_as_one_engine_and_loads_once_per_worker(
        engine_pool, reference_pixels, demo_ckpt):
    import numpy as np

    wf, sampler = txt2img(demo_ckpt)
    got = list(engine_pool.run_many(wf, overrides=[{sampler.seed: s} for s in range(4)], progress=False))
    assert sorted(r.index for r in got) == [0, 1, 2, 3]
    for r in got:
        seed = r.overrides[sampler.seed]
        np.testing.assert_array_equal(np.asarray(r.image), reference_pixels[seed])
    assert len({r.worker for r in got}) == 2  # both workers took part
    assert not np.array_equal(reference_pixels[0], reference_pixels[1])  # seeds matter, so the check means something
    for row in engine_pool.stats():
        assert row["loads"] == {demo_ckpt: 1}, row  # each worker loaded the checkpoint once, then kept it
        assert row["loaded"] == [demo_ckpt]


def test_engine_pool_forwards_progress_events_and_works_with_sweep(engine_pool, reference_pixels, demo_ckpt):
    import numpy as np

    import comfykit as ck

    wf, sampler = txt2img(demo_ckpt)
    sampler.seed = 2
    engine_pool.free()  # a worker may hold seed 2's outputs in its cache from the test before: drop them
    assert all(row["loaded"] == [] for row in engine_pool.stats())
    job = engine_pool.submit(wf)
    events = list(job)
    types = [e.type for e in events]
    assert types[0] == "execution_start" and types[-1] == "execution_success"
    assert [e.data["value"] for e in events if e.type == "progress"][-2:] == [1, 2]  # KSampler's 2 steps
    assert {e.prompt_id for e in events} == {job.prompt_id}
    np.testing.assert_array_equal(np.asarray(job.result().image), reference_pixels[2])

    swept = ck.sweep(wf, {sampler.seed: [0, 3]}, backend=engine_pool, progress=False)
    for seed in (0, 3):
        np.testing.assert_array_equal(np.asarray(swept.images[(seed,)]), reference_pixels[seed])


def test_engine_pool_a_workflow_with_a_missing_checkpoint_fails_alone(engine_pool, demo_ckpt):
    good, _ = txt2img(demo_ckpt)
    bad = good.to_api()
    bad["1"]["inputs"]["ckpt_name"] = "no-such-model.safetensors"
    got = {r.index: r for r in engine_pool.map([good, bad, good], return_exceptions=True, progress=False)}
    assert got[0].ok and got[2].ok
    assert isinstance(got[1].error, ValidationError) and got[1].attempts == 1
    assert "no-such-model.safetensors" in str(got[1].error)


def test_engine_pool_a_killed_worker_has_its_job_finished_elsewhere(engine_pool, reference_pixels, demo_ckpt,
                                                                    ray_cluster):
    # runs last among the engine tests: it leaves the pool with one worker
    import numpy as np

    wf, sampler = txt2img(demo_ckpt)
    killed = []

    def kill_on_first_progress(event):
        # runs in the pool's thread for that job: the job is mid-sampling on the worker named here
        if event.type == "progress" and not killed:
            name = next(w for w, pid in engine_pool.running().items() if pid == event.prompt_id)
            killed.append(name)
            ray_cluster.kill(engine_pool.workers[name])

    got = list(engine_pool.run_many(wf, overrides=[{sampler.seed: s} for s in range(4)], progress=False,
                                    on_event=kill_on_first_progress))
    assert sorted(r.index for r in got) == [0, 1, 2, 3]  # nothing dropped
    for r in got:
        np.testing.assert_array_equal(np.asarray(r.image), reference_pixels[r.overrides[sampler.seed]])
    assert killed and killed[0] not in engine_pool.workers and len(engine_pool.workers) == 1


# ---------------------------------------------------------------------------------------------------------------
# ComfyUI servers: one comfykit server launched as a subprocess, driven through RayPool(servers=[url])
# ---------------------------------------------------------------------------------------------------------------
def test_server_pool_refuses_a_server_that_does_not_answer(ray_cluster):
    from comfykit.pool import RayPool

    with pytest.raises(ServerError, match="127.0.0.1:9"):
        RayPool(servers=["http://127.0.0.1:9"])


def test_server_pool_runs_jobs_and_fails_them_clearly_when_the_server_stops(ray_cluster, tmp_path):
    from PIL import Image

    import comfykit as ck
    from comfykit.client import ComfyServer
    from comfykit.pool import RayPool

    # a model-free workflow keeps the server's first run short: load an image, scale it, preview it
    (tmp_path / "input").mkdir()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "input" / "red.png")
    wf = ck.Workflow()
    scaled = wf.ImageScale(image=wf.LoadImage(image="red.png").IMAGE, upscale_method="nearest-exact", width=8,
                           height=8, crop="disabled")
    wf.PreviewImage(images=scaled)
    cmd = [sys.executable, "-m", "comfykit.server", "--cpu", "--models-dir", str(tmp_path / "models"),
           "--input-directory", str(tmp_path / "input"), "--output-directory", str(tmp_path / "output"),
           "--preview-method", "none"]
    server = ComfyServer.launch(cmd=cmd, timeout=90, log_file=tmp_path / "server.log")
    try:
        with RayPool(servers=[server.url]) as pool:
            job = pool.submit(wf)
            assert [e.type for e in job][-1] == "execution_success"
            assert job.result(timeout=120).image.getpixel((0, 0)) == (200, 10, 10)

            got = []
            for r in pool.map([wf] * 4, progress=False, return_exceptions=True):
                got.append(r)
                if len(got) == 1:
                    server.stop()  # the only server goes away mid-batch
            assert sorted(r.index for r in got) == [0, 1, 2, 3]  # every job is accounted for
            lost = [r for r in got if r.error is not None]
            assert lost and all(isinstance(r.error, ServerError) for r in lost)
            assert "every worker" in str(lost[-1].error)
    finally:
        server.stop()
