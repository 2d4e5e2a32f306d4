"""Two ranks with torch.distributed (gloo, CPU): each builds its loader from the process
group; the ranks are disjoint and together cover every kept record once
(spec/adapter_torch.md, "Distributed"; spec/sampling.md, "Partition")."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

import tilespec  # noqa: E402
from tilespec import testing as tt  # noqa: E402

WORKER = textwrap.dedent("""
    import json, os, sys
    import torch.distributed as dist
    import tilespec
    from tilespec import testing as tt

    rank, world, port, folder, annotations, out = sys.argv[1:7]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=int(rank),
                            world_size=int(world))
    try:
        ds = tilespec.Dataset(tfrecords=folder, annotations=annotations).clip(4)
        opts = dict(infinite=False, batch_size=3, num_workers=2, seed=21, labels="category",
                    incl_slidenames=True, incl_loc=True, augment="xyr")
        loader = ds.torch(**opts)            # rank and num_replicas from the process group
        got = [(s, int(x)) for _, _, slides, xs, _ in loader for s, x in zip(slides, xs)]
        ref_opts = {k: v for k, v in opts.items() if k != "num_workers"}
        reference = ds.numpy(rank=dist.get_rank(), num_replicas=dist.get_world_size(),
                             **ref_opts)
        n = tt.assert_conforms(ds.torch(**opts), reference, layout="CHW", options=ref_opts)
        json.dump({"rank": loader.reference.rank, "replicas": loader.reference.num_replicas,
                   "records": got, "len": len(loader), "compared": n}, open(out, "w"))
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    # every rank is past the barrier with its results written: leave without gloo's
    # teardown, which races with the peers' exits (a rank aborted once with "terminate
    # called without an active exception" after another had closed its sockets)
    os._exit(0)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_partition_the_kept_records(tmp_path):
    layout = tt.TileDatasetLayout((("s0", "p0", "a", 7), ("s1", "p1", "b", 3),
                                   ("s2", "p1", "a", 5), ("s3", "p2", "b", 1)), tile_px=16)
    info = tt.write_tile_dataset(layout, tmp_path / "data")
    script = tmp_path / "rank.py"
    script.write_text(WORKER)
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", str(port),
                               info["tfrecords"], info["annotations"],
                               str(tmp_path / f"rank{r}.json")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(2)]
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=120)
        finally:
            p.kill()
        outputs.append(out.decode(errors="replace"))
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{outputs[r][-3000:]}"
    results = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert [(res["rank"], res["replicas"]) for res in results] == [(0, 2), (1, 2)]
    sets = [set(map(tuple, res["records"])) for res in results]
    for res, s in zip(results, sets):
        assert len(s) == len(res["records"])          # no record twice within a rank
        assert res["compared"] == res["len"]
    assert not sets[0] & sets[1]                       # ranks disjoint
    kept = {(slide, i) for slide, _, _, n in layout.slides for i in range(min(n, 4))}
    assert sets[0] | sets[1] == kept                   # every kept record once
    ds = tilespec.Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"]).clip(4)
    assert sum(len(res["records"]) for res in results) == ds.num_tiles


# ---------------------------------------------------------------- DDP under torchrun
# spec/sampling.md, "Equal steps" and "Elastic streams": real DistributedDataParallel
# training steps, launched by torchrun, gloo on CPU. Before equal steps, clip(7) with
# batch 4 on two ranks gave 24 and 18 records (7 and 5 steps) and the job hung in the
# all-reduce of rank 0's 7th step; a timeout here fails the test instead of hanging.
DDP_WORKER = textwrap.dedent("""
    import datetime, json, os, sys
    import torch, torch.distributed as dist
    from torch import nn
    import tilespec

    folder, annotations, out, workers, elastic = sys.argv[1:6]
    out = out.replace("RANK", os.environ["RANK"])
    torch.manual_seed(0)                   # the same initial weights on every rank
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    try:
        ds = tilespec.Dataset(tfrecords=folder, annotations=annotations).clip(7)
        loader = ds.torch(labels="category", batch_size=4, num_workers=int(workers),
                          infinite=False, seed=5, standardize=True, augment="xy",
                          incl_slidenames=True, incl_loc=True, elastic=elastic == "1")
        model = nn.parallel.DistributedDataParallel(nn.Sequential(
            nn.Conv2d(3, 4, 5, stride=8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4, 2)))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        records, steps = [], 0
        for images, labels, slides, xs, _ in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()   # all-reduce
            opt.step()
            steps += 1
            records += [(s, int(x)) for s, x in zip(slides, xs)]
        weights = [p.detach().double().sum().item() for p in model.parameters()]
        json.dump({"rank": rank, "steps": steps, "len": len(loader), "records": records,
                   "num_padded": loader.num_padded, "weights": weights}, open(out, "w"))
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    # every rank is past the barrier with its results written: leave without gloo's
    # teardown, which races with the peers' exits (a rank aborted once with "terminate
    # called without an active exception" after another had closed its sockets)
    os._exit(0)
""")


def _torchrun(script, nproc, args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(script), *map(str, args)]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        out, _ = p.communicate()
        pytest.fail(f"torchrun with {nproc} ranks did not finish in {timeout} s (a hang):\n"
                    f"{out.decode(errors='replace')[-3000:]}")
    assert p.returncode == 0, out.decode(errors="replace")[-3000:]


@pytest.mark.parametrize("nproc,workers,elastic", [(2, 2, False), (3, 0, True)])
def test_ddp_training_under_torchrun_takes_equal_steps(tmp_path, demo_dataset, nproc,
                                                       workers, elastic):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_WORKER)
    _torchrun(script, nproc, [demo_dataset["tfrecords"], demo_dataset["annotations"],
                              tmp_path / "rankRANK.json", workers, int(elastic)])
    results = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(nproc)]
    assert [res["rank"] for res in results] == list(range(nproc))
    steps = {res["steps"] for res in results}
    assert len(steps) == 1 and steps == {results[0]["len"]}      # equal steps, as len() says
    # the same weights on every rank after the last all-reduced step
    assert all(res["weights"] == results[0]["weights"] for res in results)
    records = [rec for res in results for rec in map(tuple, res["records"])]
    pads = sum(res["num_padded"] for res in results)
    kept = tilespec.Dataset(tfrecords=demo_dataset["tfrecords"],
                            annotations=demo_dataset["annotations"]).clip(7).num_tiles
    assert len(set(records)) == kept == 42                       # together complete
    assert len(records) == kept + pads                           # disjoint, pads aside
    if elastic:       # 42 records in global batches of 12: 4 steps, the last padded by 6
        assert steps == {4} and pads == 6
    else:             # 21 records a rank, 6 steps of 4 (the last of 1), no pad needed
        assert steps == {6} and pads == 0
