"""The local Ray a run starts for itself (``cluster.start_ray``): a run directory whose path is
too long for Ray's socket paths gets a temp dir of its own under /tmp, removed when that Ray
stops, and only then."""

from pathlib import Path


def test_the_temp_dir_made_for_a_runs_ray_is_removed_when_it_stops(tmp_path):
    import ray

    from ray_s3ft.config import load_config
    from ray_s3ft.run.cluster import start_ray

    run_dir = tmp_path / ("a-run-directory-" + "x" * 40)  # over the 40 bytes Ray's sockets allow
    before = set(Path("/tmp").glob("ray_s3ft-*"))
    local = start_ray(load_config(), run_dir)
    temp = local.temp
    assert temp in set(Path("/tmp").glob("ray_s3ft-*")) - before
    assert ray.get(ray.put(7)) == 7  # Ray runs there: its session files are in the temp dir
    assert list(temp.glob("session_*/sockets"))
    local.stop()
    assert not ray.is_initialized() and not temp.exists()
