"""``python -m comfykit.server``: ComfyUI main.py's flags, and one real start in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import requests

from comfykit.server.cli import engine_kwargs, main, parse_args


def test_flags_map_to_engine_and_server_options(capsys):
    args = parse_args(["--listen", "--port", "8190", "--cpu", "--cache-lru", "5", "--preview-method", "taesd",
                       "--temp-directory", "/tmp/x", "--models-dir", "m", "--output-directory", "o",
                       "--input-directory", "i", "--preview-size", "256", "--enable-cors-header",
                       "--max-upload-size", "5", "--dont-print-server", "--disable-auto-launch",
                       "--use-split-cross-attention", "--front-end-root", "/srv/web"])
    assert args.listen == "0.0.0.0" and args.port == 8190 and args.enable_cors_header == "*"
    assert args.max_upload_size == 5 and args.dont_print_server
    assert engine_kwargs(args) == {"models_dir": "m", "output_dir": "o", "input_dir": "i", "previews": "taesd",
                                   "preview_size": 256, "temp_dir": os.path.join("/tmp/x", "temp"),
                                   "device": "cpu", "cache": "lru", "cache_size": 5}
    warning = capsys.readouterr().err
    assert "--use-split-cross-attention" in warning and "--front-end-root" in warning
    assert parse_args([]).listen == "127.0.0.1"  # never exposed unless asked
    assert parse_args(["--listen", "10.0.0.2,::1"]).listen == "10.0.0.2,::1"
    assert engine_kwargs(parse_args(["--cache-none"]))["cache"] == "none"


def test_quick_test_for_ci_builds_and_exits(tmp_path, capsys):
    code = main(["--quick-test-for-ci", "--models-dir", str(tmp_path / "m"), "--output-directory",
                 str(tmp_path / "o"), "--input-directory", str(tmp_path / "i"), "--temp-directory", str(tmp_path),
                 "--disable-metadata", "--cpu"])
    assert code == 0 and "quick test" in capsys.readouterr().out
    assert (tmp_path / "o").is_dir() and (tmp_path / "temp").is_dir()


def test_bad_flag_value_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "comfykit.server", "--preview-method", "magic"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--preview-method" in proc.stderr


def test_server_process_starts_prints_url_serves_and_stops(tmp_path, server_root):
    cmd = [sys.executable, "-m", "comfykit.server", "--port", "0", "--cpu", "--models-dir",
           str(server_root / "models"), "--output-directory", str(tmp_path / "out"), "--input-directory",
           str(server_root / "input"), "--temp-directory", str(tmp_path), "--preview-method", "none",
           "--disable-xformers"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            found = re.search(r"To see the GUI go to: (http://\S+)", line)
            url = found.group(1) if found else None
        assert url and url.startswith("http://127.0.0.1:"), "no 'To see the GUI go to' line"
        assert requests.get(url + "/system_stats", timeout=30).status_code == 200
        prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "dot.png"}},
                  "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "cli"}}}
        pid = requests.post(url + "/prompt", json={"prompt": prompt}, timeout=30).json()["prompt_id"]
        for _ in range(600):
            item = requests.get(f"{url}/history/{pid}", timeout=30).json()
            if item:
                break
            time.sleep(0.05)
        assert item[pid]["status"]["status_str"] == "success"
        assert (tmp_path / "out" / "cli_00001_.png").is_file()
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=30)
    assert "--disable-xformers" in err  # unknown ComfyUI flags: accepted with a warning


def test_importing_the_server_package_stays_light():
    code = ("import sys, comfykit, comfykit.server; "
            "heavy = [m for m in ('aiohttp', 'torch', 'pyngrok') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.strip() == "[]"


def test_serve_in_background_context_manager_and_port_clash(server_root, tmp_path):
    import pytest

    from comfykit.errors import ServerError
    from comfykit.server import serve

    with serve(port=0, models_dir=server_root / "models", output_dir=tmp_path / "o", input_dir=tmp_path / "i",
               temp_dir=tmp_path / "t", device="cpu") as handle:
        assert requests.get(handle.url + "/", timeout=30).headers["Content-Type"].startswith("text/html")
        with pytest.raises(ServerError, match="port"):
            serve(handle.engine, port=handle.port)
        with pytest.raises(TypeError, match="Engine"):
            serve(handle.engine, port=0, device="cpu")
    with pytest.raises(requests.ConnectionError):
        requests.get(handle.url + "/features", timeout=5)


def test_limit_flags_default_to_the_server_limits_and_zero_turns_one_off(capsys):
    from comfykit.graph.limits import Limits
    from comfykit.server.cli import limits_from

    assert limits_from(parse_args([])) == Limits.server_defaults()
    custom = limits_from(parse_args(["--max-pixels", "1000", "--max-batch", "0", "--max-prompt-nodes", "7",
                                     "--max-text-tokens", "-1"]))
    assert custom == Limits(max_pixels=1000, max_batch=None, max_prompt_nodes=7, max_text_tokens=None)
    from comfykit.server.cli import build_parser

    text = build_parser().format_help()
    assert "(default: 16777216)" in text and "(default: 8188)" not in text.replace("(default 8188)", "")
