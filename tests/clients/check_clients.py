"""The Open Inference Protocol clients people use, at their default settings, against
`pepnet serve`: NVIDIA's tritonclient (HTTP and gRPC: binary tensors on), the KServe SDK
(REST, binary tensors on; gRPC), compression, the model configuration, statistics and
repository extensions, and perf_analyzer over both protocols with zero errors.

Every score must equal `pepnet score`'s bit for bit, for requests of 1, 7 and 256 rows.

    python tests/clients/check_clients.py --pepnet target/release/pepnet [--perf-seconds 30]

Run by .ci/run in a virtual environment holding tritonclient[all]==2.41.0, kserve and
nvidia-cuda-runtime-cu12 (perf_analyzer's CUDA runtime; it sends nothing to a GPU).
"""

import argparse
import asyncio
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "kuairand"
INPUT = MODEL / "input.csv"
NAME = "pepnet"


def log(message):
    print(f"[clients] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# The model's tensors, from its spec and the example's CSV.


def read_inputs(spec, rows):
    """Per input tensor of the model, its numpy array for `rows` (dicts of the CSV's columns):
    a sparse feature's ids, a multi-hot feature's ids one sample after another plus
    `<feature>.lengths`, a dense feature's values."""
    tensors = {}
    for f in spec["features"]:
        name, kind = f["name"], f["kind"]
        id_type = np.uint64 if f.get("hashed") else np.int64
        if kind == "sparse":
            tensors[name] = np.array([int(r[name]) for r in rows], dtype=id_type)
        elif kind == "dense":
            tensors[name] = np.array([float(r[name]) for r in rows], dtype=np.float32)
        elif kind == "multi_hot":
            ids, lengths = [], []
            for r in rows:
                sample = [int(v) for v in r[name].split("|") if v != ""]
                ids.extend(sample)
                lengths.append(len(sample))
            tensors[name] = np.array(ids, dtype=id_type)
            tensors[name + ".lengths"] = np.array(lengths, dtype=np.int32)
        else:
            raise SystemExit(f"{MODEL}/model.json: feature '{name}': unknown kind {kind}")
    return tensors


def datatype(array):
    return {
        np.dtype(np.int64): "INT64",
        np.dtype(np.uint64): "UINT64",
        np.dtype(np.int32): "INT32",
        np.dtype(np.float32): "FP32",
    }[array.dtype]


def expected_scores(pepnet, work, tasks):
    """`pepnet score`'s probabilities for every row of the example, per task (float32)."""
    out = work / "scores.csv"
    subprocess.run(
        [pepnet, "score", "--model", MODEL, "--input", INPUT, "--output", out],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    return {t: np.array([np.float32(r[t]) for r in rows], dtype=np.float32) for t in tasks}


def same_bits(got, want, what):
    got = np.asarray(got, dtype=np.float32).reshape(-1)
    if got.shape != want.shape or not np.array_equal(got.view(np.uint32), want.view(np.uint32)):
        diff = np.nonzero(got.view(np.uint32) != want.view(np.uint32))[0] if got.shape == want.shape else []
        raise AssertionError(
            f"{what}: scores differ from `pepnet score` (shape {got.shape} vs {want.shape}; "
            f"first differing rows {list(diff[:5])})"
        )


# ---------------------------------------------------------------------------------------------
# The server.


class Server:
    """`pepnet serve` on loopback ports chosen by the system; stopped with SIGTERM."""

    def __init__(self, pepnet, *args):
        self.process = subprocess.Popen(
            [pepnet, "serve", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.http = self.grpc = None
        deadline = time.time() + 120
        for line in self.process.stderr:
            found = re.search(r"http=http://(\S+) grpc=grpc://(\S+)", line)
            if found:
                self.http, self.grpc = found.group(1), found.group(2)
                break
            if time.time() > deadline:
                break
        if not self.http:
            self.process.kill()
            raise SystemExit("pepnet serve did not report its addresses")
        # Keep reading its logs so that the pipe never fills.
        self.logs = []
        threading.Thread(target=lambda: self.logs.extend(self.process.stderr), daemon=True).start()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        assert code == 0, f"pepnet serve exited with {code}: {''.join(self.logs[-20:])}"


# ---------------------------------------------------------------------------------------------
# tritonclient and the KServe SDK at their defaults.


def triton_http(server, tensors, tasks, **options):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http)
    inputs = []
    for name, array in tensors.items():
        i = httpclient.InferInput(name, list(array.shape), datatype(array))
        i.set_data_from_numpy(array)  # binary_data=True, the default
        inputs.append(i)
    outputs = [httpclient.InferRequestedOutput(t) for t in tasks]  # binary by default
    result = client.infer(NAME, inputs, outputs=outputs, **options)
    return {t: result.as_numpy(t) for t in tasks}


def triton_grpc(server, tensors, tasks, **options):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc)
    inputs = []
    for name, array in tensors.items():
        i = grpcclient.InferInput(name, list(array.shape), datatype(array))
        i.set_data_from_numpy(array)  # raw_input_contents
        inputs.append(i)
    outputs = [grpcclient.InferRequestedOutput(t) for t in tasks]
    result = client.infer(NAME, inputs, outputs=outputs, **options)
    return {t: result.as_numpy(t) for t in tasks}


def kserve_rest(server, tensors, tasks):
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def run():
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        inputs = []
        for name, array in tensors.items():
            i = InferInput(name, list(array.shape), datatype(array))
            i.set_data_from_numpy(array)  # binary_data=True, the default
            inputs.append(i)
        request = InferRequest(model_name=NAME, infer_inputs=inputs, request_id="kserve-rest")
        response = await client.infer(f"http://{server.http}", request, model_name=NAME)
        await client.close()
        return response

    response = asyncio.run(run())
    return {o.name: o.as_numpy() for o in response.outputs}


def kserve_grpc(server, tensors, tasks):
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def run():
        client = InferenceGRPCClient(server.grpc)
        inputs = []
        for name, array in tensors.items():
            i = InferInput(name, list(array.shape), datatype(array))
            i.set_data_from_numpy(array)
            inputs.append(i)
        request = InferRequest(model_name=NAME, infer_inputs=inputs, request_id="kserve-grpc")
        response = await client.infer(request)
        await client.close()
        return response

    response = asyncio.run(run())
    return {o.name: o.as_numpy() for o in response.outputs}


def check_scores(server, spec, rows, expected, sdk):
    """Requests of 1, 7 and 256 rows through tritonclient's (`sdk` "triton") or the KServe
    SDK's clients (`sdk` "kserve": both register the protocol's messages under the same names,
    so each runs in a process of its own)."""
    tasks = spec["tasks"]
    clients = {
        "triton": {
            "tritonclient.http": lambda t: triton_http(server, t, tasks),
            "tritonclient.http gzip": lambda t: triton_http(
                server, t, tasks, request_compression_algorithm="gzip",
                response_compression_algorithm="gzip"),
            "tritonclient.grpc": lambda t: triton_grpc(server, t, tasks),
            "tritonclient.grpc gzip": lambda t: triton_grpc(
                server, t, tasks, compression_algorithm="gzip"),
        },
        "kserve": {
            "kserve REST": lambda t: kserve_rest(server, t, tasks),
            "kserve gRPC": lambda t: kserve_grpc(server, t, tasks),
        },
    }[sdk]
    for n in (1, 7, 256):
        start = 3 if n < 256 else 0
        tensors = read_inputs(spec, rows[start : start + n])
        for client, infer in clients.items():
            got = infer(tensors)
            for t in tasks:
                same_bits(got[t], expected[t][start : start + n], f"{client}, {n} rows, {t}")
        log(f"{n:>3} rows: {', '.join(clients)}: bit for bit")


def check_extensions(server, spec):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    http = httpclient.InferenceServerClient(server.http)
    grpc = grpcclient.InferenceServerClient(server.grpc)
    assert http.is_server_live() and http.is_server_ready() and http.is_model_ready(NAME)
    assert grpc.is_server_live() and grpc.is_server_ready() and grpc.is_model_ready(NAME)
    for metadata in (http.get_server_metadata(), grpc.get_server_metadata(as_json=True)):
        for extension in ("binary_tensor_data", "model_configuration", "model_repository", "statistics"):
            assert extension in metadata["extensions"], metadata
    for config in (http.get_model_config(NAME), grpc.get_model_config(NAME, as_json=True)["config"]):
        names = [i["name"] for i in config["input"]]
        assert "user_id" in names and "tag_ids.lengths" in names, config
        assert [o["name"] for o in config["output"]] == spec["tasks"], config
    stats = http.get_inference_statistics(NAME)["model_stats"][0]
    assert stats["name"] == NAME and int(stats["inference_stats"]["success"]["count"]) > 0, stats
    stats = grpc.get_inference_statistics(NAME, as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) > 0 and stats["batch_stats"], stats
    index = http.get_model_repository_index()
    assert {"name": NAME, "version": "1", "state": "READY"} in index, index
    # Unload, then load again (a model directory reloads as its next version).
    http.unload_model(NAME)
    assert not http.is_model_ready(NAME)
    grpc.load_model(NAME)
    assert grpc.is_model_ready(NAME) and grpc.get_model_metadata(NAME).versions == ["2"]
    log("metadata, configuration, statistics, repository index, unload and load: as Triton's clients read them")


# ---------------------------------------------------------------------------------------------
# perf_analyzer.


def perf_analyzer_data(spec, rows, path, rows_per_request=16):
    """perf_analyzer's --input-data file: requests of `rows_per_request` rows of the example."""
    steps = []
    for start in range(0, len(rows) - rows_per_request + 1, rows_per_request):
        tensors = read_inputs(spec, rows[start : start + rows_per_request])
        steps.append(
            {name: {"content": a.tolist(), "shape": list(a.shape)} for name, a in tensors.items()}
        )
    path.write_text(json.dumps({"data": steps}))


def perf_analyzer(venv_bin, server, protocol, data, seconds, work):
    exe = shutil.which("perf_analyzer", path=str(venv_bin)) or shutil.which("perf_analyzer")
    if not exe:
        raise SystemExit("perf_analyzer is missing (pip install tritonclient[all]==2.41.0)")
    import nvidia.cuda_runtime

    cudart = Path(nvidia.cuda_runtime.__path__[0]) / "lib"
    env = dict(os.environ, LD_LIBRARY_PATH=f"{cudart}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    url = server.http if protocol == "http" else server.grpc
    report = work / f"perf_{protocol}.csv"
    # Three windows of a third of the run each, whatever their stability: a bounded run.
    window_ms = max(1000, seconds * 1000 // 3)
    command = [
        exe, "-m", NAME, "-u", url, "-i", protocol,
        "--input-data", str(data),
        "--concurrency-range", "4",
        "--measurement-interval", str(window_ms),
        "--max-trials", "3",
        "--stability-percentage", "999",
        "-f", str(report),
    ]
    log(f"perf_analyzer over {protocol}: {' '.join(map(str, command[1:]))}")
    run = subprocess.run(command, env=env, text=True, capture_output=True, timeout=seconds * 4 + 120)
    print(run.stdout[-3000:], flush=True)
    if run.returncode != 0:
        print(run.stderr[-3000:], file=sys.stderr)
        raise AssertionError(f"perf_analyzer over {protocol} exited with {run.returncode}")
    throughput = re.search(r"Throughput: ([\d.]+) infer/sec", run.stdout)
    latency = re.search(r"Avg latency: (\d+) usec", run.stdout)
    return float(throughput.group(1)), int(latency.group(1)) if latency else None


def metrics(server):
    import urllib.request

    with urllib.request.urlopen(f"http://{server.http}/metrics") as r:
        text = r.read().decode()
    counts = {}
    for line in text.splitlines():
        found = re.match(r'pepnet_requests_total\{protocol="(\w+)",code="(\w+)"\} (\d+)', line)
        if found:
            counts[(found.group(1), found.group(2))] = int(found.group(3))
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pepnet", default=str(ROOT / "target" / "release" / "pepnet"))
    parser.add_argument("--perf-seconds", type=int, default=30)
    parser.add_argument("--json", help="write the perf_analyzer figures here")
    parser.add_argument("--kserve-against", nargs=3, metavar=("HTTP", "GRPC", "SCORES"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()

    spec = json.loads((MODEL / "model.json").read_text())
    with open(INPUT, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 256, f"{INPUT}: {len(rows)} rows, the checks need 256"
    if args.kserve_against:
        http, grpc, scores = args.kserve_against
        server = argparse.Namespace(http=http, grpc=grpc)
        expected = {t: np.load(scores)[i] for i, t in enumerate(spec["tasks"])}
        check_scores(server, spec, rows, expected, "kserve")
        return
    with tempfile.TemporaryDirectory(prefix="pepnet-clients-") as work:
        work = Path(work)
        expected = expected_scores(args.pepnet, work, spec["tasks"])
        np.save(work / "expected.npy", np.stack([expected[t] for t in spec["tasks"]]))
        server = Server(args.pepnet, "--model", str(MODEL), "--name", NAME)
        try:
            check_scores(server, spec, rows, expected, "triton")
            subprocess.run(
                [sys.executable, __file__, "--kserve-against", server.http, server.grpc,
                 str(work / "expected.npy")],
                check=True,
            )
            check_extensions(server, spec)
            data = work / "perf_data.json"
            perf_analyzer_data(spec, rows, data)
            figures = {}
            for protocol in ("http", "grpc"):
                before = metrics(server)
                throughput, latency = perf_analyzer(
                    Path(sys.executable).parent, server, protocol, data, args.perf_seconds, work
                )
                after = metrics(server)
                refused = {
                    k: after[k] - before.get(k, 0)
                    for k in after
                    if k[1] not in ("200", "OK") and after[k] != before.get(k, 0)
                }
                ok = after[(protocol, "200" if protocol == "http" else "OK")] - before.get(
                    (protocol, "200" if protocol == "http" else "OK"), 0)
                assert not refused, f"perf_analyzer over {protocol}: refused requests {refused}"
                assert ok > 0, f"perf_analyzer over {protocol}: no request answered"
                log(f"perf_analyzer over {protocol}: {ok} requests, 0 errors, "
                    f"{throughput:.1f} infer/s (16 rows each), avg latency {latency} us")
                figures[protocol] = {"requests": ok, "infer_per_sec": throughput, "avg_latency_us": latency}
            if args.json:
                Path(args.json).write_text(json.dumps(figures, indent=2))
        finally:
            server.stop()
    log("all clients agree with `pepnet score`")


if __name__ == "__main__":
    main()
