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
    import json, sys
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
    finally:
        dist.destroy_process_group()
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
