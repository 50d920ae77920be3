"""gpu_check.json → the markdown table (gpu_check.md), with projections against the seed's published speeds."""

from __future__ import annotations

from gpu_check_sections import SEED_ITERATIONS

SEED_1080TI_S = 13 * 3600 / SEED_ITERATIONS  # "around 13 hours on two 1080ti" for 41k iterations (seed README)
FORK_V100_S = 0.82  # the fork's log: ~82 s per 100 iterations on 2 V100s, 4 x 768² per GPU, fp32


def _f(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _results(report: dict, name: str) -> dict:
    return report["sections"].get(name, {}).get("results", {})


def _header(report: dict) -> list[str]:
    env = _results(report, "env")
    ceil = env.get("matmul_tflops", {})
    lines = [
        f"# GPU check: {env.get('device', '?')} ({report['mode']}, {report['started']})",
        "",
        f"torch {env.get('torch', '?')}, torchvision {env.get('torchvision', '?')}, cuDNN {env.get('cudnn', '–')}, "
        f"{env.get('memory_gib', '–')} GiB, {env.get('cpu_count', '?')} CPUs; cuDNN TF32 "
        f"{'on' if env.get('cudnn_allow_tf32') else 'off'} (on a GPU: 'fp32' convs run on TF32 tensor cores). Measured "
        f"matmul ceilings: bf16 {_f(ceil.get('bf16'))}, fp32/TF32 {_f(ceil.get('fp32'))} TFLOP/s; datasheet "
        f"{env.get('datasheet_tflops') or 'unknown for this device'}. Random initial weights throughout.",
        "",
        "| section | status | s | note |",
        "|---|---|---|---|",
    ]
    for name, sec in report["sections"].items():
        lines.append(f"| {name} | {sec['status']} | {sec.get('seconds', '–')} | {sec.get('error', '')} |")
    if report["mode"] == "cpu-smoke":
        lines += ["", "CPU smoke: tiny sizes prove the script runs; no figure here says anything about a GPU."]
    return lines


def _correctness(report: dict) -> list[str]:
    res, sizes = _results(report, "correctness"), report["sizes"]
    if not res:
        return []
    lines = [
        "",
        f"## Correctness: ResNet-50, {sizes['batch']} x {sizes['crop']}², {sizes['iterations']} iterations, "
        "same init and data",
        "",
        "| run | first loss | last loss | first-step rel. diff | last-third mean rel. diff | max single-step "
        "rel. diff | loss fell | within tolerance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, losses in res.get("losses", {}).items():
        v = res.get("verdicts", {}).get(name, {})
        lines.append(
            f"| {name} | {losses[0]:.4f} | {losses[-1]:.4f} | {_f(v.get('first_rel'))} | "
            f"{_f(v.get('late_mean_rel'))} | {_f(v.get('max_step_rel'))} | {v.get('decreased', '–')} | "
            f"{v.get('ok', '–')} |"
        )
    cl, syncs, bn = res.get("channels_last_same_loss", {}), res.get("syncs_per_step", {}), res.get("syncbn", {})
    lines += [
        "",
        f"- channels_last, one fp32 forward: rel. diff {_f(cl.get('rel'))} (ok: {cl.get('ok', '–')})",
        f"- host syncs per engine iteration: {syncs}",
        f"- SyncBatchNorm ({bn.get('backend', '–')}, 1 rank, layers {bn.get('norm_layers', '–')}): loss "
        f"{_f(bn.get('loss'))}, grads finite {bn.get('grads_finite', '–')}; the synchronised function vs "
        f"batch_norm: rel. diff {_f(bn.get('function_rel_diff'))}, host syncs in its forward "
        f"{bn.get('function_forward_syncs', '–')}",
    ]
    return lines


def _ddp(report: dict) -> list[str]:
    res = _results(report, "ddp")
    if not res:
        return []
    setup, bn, ddp = res.get("setup", {}), res.get("syncbn", {}), res.get("ddp", {})
    metric, resume = res.get("metric", {}), res.get("resume", {})
    devices = ", ".join(setup.get("devices", []))
    tolerance = resume.get("tolerance")
    rule = "bit for bit" if tolerance == 0 else f"max rel. diff {_f(tolerance)} (CUDA atomics: see gpu_check_ddp.py)"
    return [
        "",
        f"## Two processes: {setup.get('backend', '–')} on {devices or '–'}",
        "",
        "| check | figures | ok |",
        "|---|---|---|",
        f"| SyncBatchNorm ({bn.get('layer', '–')}) on half a batch vs float64 batch_norm on the whole | worst rel. "
        f"diff {_f(bn.get('worst'))} (output, grads, running stats) | {bn.get('ok', '–')} |",
        f"| DDP ({ddp.get('wrapped', '–')}, norms {ddp.get('norm_layers', '–')}): 2 train_steps | parameters "
        f"identical across ranks: {ddp.get('params_identical_across_ranks', '–')} ({ddp.get('params', '–')}) | "
        f"{ddp.get('ok', '–')} |",
        f"| ConfusionMatrix.reduce_from_all_processes vs the sum of both ranks' | {metric.get('pixels', '–')} pixels, "
        f"equal: {metric.get('equal_to_sum', '–')} | {metric.get('ok', '–')} |",
        f"| engine.train stopped at {resume.get('stopped_at', '–')}, resumed to {resume.get('iterations', '–')}, vs "
        f"uninterrupted ({rule}) | bit-identical {resume.get('bit_identical', '–')}, worst rel. diff "
        f"{_f(resume.get('worst_rel_diff'))}, val mIoU {resume.get('val_mIoU', '–')}, {_f(resume.get('seconds'))} s | "
        f"{resume.get('ok', '–')} |",
    ]


def _speed_row(report: dict, backbone: str, mode: str, m: dict, flops: int | None) -> str:
    env = _results(report, "env")
    kind = "bf16" if "bf16" in mode else "fp32"
    tflops = flops / m["s_per_step"] / 1e12 if flops else None
    ceiling = env.get("matmul_tflops", {}).get(kind)
    sheet = (env.get("datasheet_tflops") or {}).get(kind)
    hours = SEED_ITERATIONS * m["s_per_step"] / 3600
    share = [f"{100 * tflops / c:.0f}%" if tflops and c else "–" for c in (ceiling, sheet)]
    return (
        f"| {backbone} | {mode} | {m['s_per_step']:.4f} | {m['images_per_s']:.1f} | {_f(tflops)} | {share[0]} | "
        f"{share[1]} | {hours:.1f} | {_f(m.get('mem_gib'))} |"
    )


def _speed(report: dict) -> list[str]:
    sizes = report["sizes"]
    lines = [
        "",
        f"## Train step per GPU: {sizes['batch']} x {sizes['crop']}², seed preset (OHEM), random init",
        "",
        "| backbone | mode | s/step | images/s | TFLOP/s | % of matmul ceiling | % of datasheet | "
        f"h for {SEED_ITERATIONS // 1000}k its on 2 GPUs | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for backbone in ("resnet50", "resnet101"):
        res = _results(report, f"speed-{backbone}")
        modes = res.get("modes", {})
        for mode, m in modes.items():
            if mode != "flops":
                lines.append(_speed_row(report, backbone, mode, m, modes.get("flops")))
        comp = _results(report, f"compile-{backbone}")
        if "s_per_step" in comp:
            m = {"s_per_step": comp["s_per_step"], "images_per_s": comp["images_per_s"]}
            lines.append(_speed_row(report, backbone, "bf16+channels_last+compile", m, modes.get("flops")))
            notes.append(f"{backbone} compile (first 3 steps): {comp['compile_s']:.0f} s")
        if "agree_overhead" in res:
            notes.append(
                f"{backbone}: the engine's one sync per step costs {100 * res['agree_overhead']['overhead']:+.1f}%"
            )
        if "bn_sync_overhead" in res:
            o = res["bn_sync_overhead"]
            notes.append(
                f"{backbone}: a host sync after each of {o['bn_layers']} BN layers (torch's SyncBatchNorm "
                f"on 2+ GPUs) costs {100 * o['overhead']:+.1f}%"
            )
    lines += [
        "",
        f"Hours assume 2 GPUs keep the per-GPU step (global batch 8, as the seed). References: the seed, ~13 h on 2 "
        f"1080 Ti ({SEED_1080TI_S:.2f} s/iteration); the fork, {FORK_V100_S} s/iteration on 2 V100 "
        f"({SEED_ITERATIONS * FORK_V100_S / 3600:.1f} h for 41k). FLOPs: torch's flop counter over one fp32 step.",
    ]
    return lines + [f"- {n}" for n in notes]


def _yes_no(checks: dict | None) -> str:
    """``{path: bool}`` → "yes" when every path's check held, else the paths where it did not."""
    if not checks:
        return "not checked"
    failed = [path for path, ok in checks.items() if not ok]
    return "yes" if not failed else "NO (" + ", ".join(failed) + ")"


def _eval_and_data(report: dict) -> list[str]:
    lines, sizes = [], report["sizes"]
    per_image = _results(report, "eval").get("per_image", {})
    if per_image:
        h, w = sizes["eval_hw"]
        lines += [
            "",
            f"## Evaluation: seconds per {h}x{w} image",
            "",
            "| model | single scale | 6 scales + flip | 500 images, 6 scales + flip (min) | peak GiB single / multi |",
            "|---|---|---|---|---|",
        ]
        for key, r in per_image.items():
            lines.append(
                f"| {key} | {r['single_s']:.3f} | {r['multi_flip_s']:.3f} | {500 * r['multi_flip_s'] / 60:.1f} | "
                f"{_f(r.get('single_mem_gib'))} / {_f(r.get('multi_flip_mem_gib'))} |"
            )
        lines += ["", "Each timed after one untimed pass of the same kind (warm: cuDNN's algorithms, the allocator)."]
    data = _results(report, "data")
    if data.get("images_per_s"):
        h, w = sizes["data_hw"]
        lines += [
            "",
            f"## Data: {w}x{h} synthetic frames through the engine's loader (seed augmentation), PNG and cached",
            "",
            "| workers | PNG images/s | decoded cache images/s |",
            "|---|---|---|",
        ]
        cached = data.get("cache_images_per_s", {})
        lines += [f"| {n} | {r:.1f} | {_f(cached.get(n), 4)} |" for n, r in data["images_per_s"].items()]
        lines.append(
            "\nBatches copied to the device and normalized there, as trained (uint8 from the workers). The device's "
            f"normalization equals the CPU arithmetic bit for bit: {_yes_no(data.get('normalize_bit_equal'))}"
        )
        for backbone, d in data.get("demand", {}).items():
            lines.append(
                f"\n{backbone}: the fastest eager step consumes {d['images_per_s']:.1f} images/s per GPU; "
                f"num_workers per GPU with 25% headroom: {d['num_workers'] or 'more than tested'} from PNGs, "
                f"{d.get('cache_num_workers') or 'more than tested'} from the cache"
            )
    return lines


def render(report: dict) -> str:
    body = _header(report) + _correctness(report) + _ddp(report) + _speed(report) + _eval_and_data(report)
    return "\n".join(body) + "\n"
