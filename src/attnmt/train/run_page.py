"""``<run>/index.html``: a training run on one page, rewritten after every validation and at the end.

It shows the run's config, its curves (``curves.png``: training and validation loss, validation
BLEU, learning rate, attention entropy and AER) and, for each sentence of the attention monitor
(:mod:`attnmt.train.monitor`), a slider over the validation steps that flips through its heatmaps, with
the hypothesis of that step, and an animated GIF of the same (``attention/NNNN.gif``). Plain HTML
and a little JavaScript, nothing fetched: it opens from the file system. ``index.html#step=N``
opens every slider at validation step ``N``.
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
from pathlib import Path
from typing import Annotated

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from attnmt.train.monitor import AttentionMonitor, read_records
from attnmt.utils.io import atomic_write_text
from attnmt.utils.schema import Ge
from attnmt.utils.stored import target_name

log = logging.getLogger(__name__)

CURVES = {  # panel title -> the logged values it draws
    "loss": ("train/loss", "val/loss"),
    "validation BLEU (greedy)": ("val/bleu",),
    "learning rate": ("lr",),
    "attention of the monitored sentences": ("attention/entropy", "attention/aer"),
}


class RunPage(Callback):
    """Writes ``<dirpath>/index.html`` after every validation and when training ends."""

    def __init__(self, dirpath: str, gif: bool = True, gif_frames: Annotated[int, Ge(2)] = 40):
        self.dirpath = Path(dirpath)
        self.gif = gif
        self.gif_frames = gif_frames
        self.history: dict[str, list[tuple[int, float]]] = {}  # logged name -> [(step, value)]
        self.seconds = 0.0  # spent writing the page, reported at the end
        self._drawn_step: int | None = None  # the step curves.png and the GIFs were drawn at

    def _add(self, name: str, step: int, value) -> None:
        if value is None:
            return
        points = self.history.setdefault(name, [])
        if points and points[-1][0] == step:
            points[-1] = (step, float(value))
        else:
            points.append((step, float(value)))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % trainer.log_every_n_steps == 0 and trainer.is_global_zero:
            self._add("train/loss", step, trainer.callback_metrics.get("train/loss"))
            if trainer.optimizers:
                self._add("lr", step, trainer.optimizers[0].param_groups[0]["lr"])

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        for name in ("val/loss", "val/bleu", "attention/entropy", "attention/aer"):
            self._add(name, trainer.global_step, trainer.callback_metrics.get(name))
        self.write(trainer, pl_module, finished=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.write(trainer, pl_module, finished=True)
            log.info("Run page: %s (%.1f s spent writing it)", self.dirpath / "index.html", self.seconds)

    def write(self, trainer: pl.Trainer, pl_module, finished: bool) -> None:
        start = time.perf_counter()
        monitor = next((cb for cb in trainer.callbacks if isinstance(cb, AttentionMonitor)), None)
        try:
            write_run_page(
                self.dirpath, getattr(pl_module, "train_config", {}), self.history,
                monitor.dirpath if monitor is not None else None, trainer.global_step, finished,
                self.gif_frames if self.gif else 0, redraw=trainer.global_step != self._drawn_step,
            )
            self._drawn_step = trainer.global_step
        except Exception as e:  # the page is a view of the run: never a reason to stop it
            log.warning("run page not written: %s: %s", type(e).__name__, e)
        self.seconds += time.perf_counter() - start

    def state_dict(self) -> dict:
        return {"history": {k: [list(p) for p in v] for k, v in self.history.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = {k: [tuple(p) for p in v] for k, v in state_dict.get("history", {}).items()}


# -- pictures ---------------------------------------------------------------------------------------
def plot_curves(history: dict[str, list[tuple[int, float]]], path: Path) -> None:
    from attnmt.viz.plotting import plt, save_figure

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.2))
    for ax, (title, names) in zip(axes, CURVES.items()):
        for name in names:
            points = history.get(name, [])
            if points:
                ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, markersize=3, label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path.with_suffix(""), ("png",))


def write_gif(frames: list[Path], path: Path, max_frames: int, fps: float = 2.0) -> None:
    """The PNGs ``frames`` (of different sizes: hypotheses change length) as one animated GIF,
    each drawn at the top left of a white canvas as large as the largest; at most ``max_frames``,
    evenly spaced, the last always kept."""
    from matplotlib.animation import PillowWriter

    from attnmt.viz.plotting import plt

    if len(frames) > max_frames:
        step = (len(frames) - 1) / (max_frames - 1)
        frames = [frames[round(k * step)] for k in range(max_frames)]
    images = [plt.imread(p) for p in frames]  # (H, W, 4) floats
    height, width = max(im.shape[0] for im in images), max(im.shape[1] for im in images)
    scale = min(1.0, 800 / width)  # a GIF frame need not be finer than the page shows it
    fig = plt.figure(figsize=(width * scale / 100, height * scale / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    # PIL picks the format from the name's suffix: the temporary file must end in .gif too.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.gif")
    try:
        writer = PillowWriter(fps=fps)
        with writer.saving(fig, str(tmp), dpi=100):
            for im in images:
                ax.clear()
                ax.set_axis_off()
                ax.imshow(im, extent=(0, im.shape[1], im.shape[0], 0))
                ax.set_xlim(0, width)
                ax.set_ylim(height, 0)
                writer.grab_frame(facecolor="white")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)


# -- the page ---------------------------------------------------------------------------------------
def config_summary(config: dict) -> list[tuple[str, str]]:
    """One row per config group: its class and scalar settings."""
    rows = []
    for group in ("model", "data", "optimizer", "scheduler", "task", "trainer"):
        node = config.get(group)
        if not isinstance(node, dict):
            continue
        target = target_name(node.get("_target_", ""))
        items = [f"{k}={v}" for k, v in node.items() if not k.startswith("_") and not isinstance(v, (dict, list))]
        rows.append((group, f"{target} ({', '.join(items)})" if target else ", ".join(items)))
    for key in ("seed", "resume", "init"):
        if config.get(key) is not None:
            rows.append((key, str(config[key])))
    return rows


def _fmt(value) -> str:
    return "" if value is None else f"{value:.3f}"


def write_run_page(
    run_dir: Path, config: dict, history: dict[str, list[tuple[int, float]]], attention_dir: Path | None,
    step: int, finished: bool, gif_frames: int = 40, redraw: bool = True,
) -> Path:
    """``run_dir/index.html`` (with ``curves.png`` and the GIFs) from what the run has logged and
    the attention monitor's records; returns the page's path. ``redraw=False``: the pictures are
    those of the same step (the end of training right after its last validation), kept as they are."""
    esc = html.escape
    run_dir = Path(run_dir)
    if redraw:
        plot_curves(history, run_dir / "curves.png")
    records = read_records(attention_dir) if attention_dir is not None and attention_dir.is_dir() else []

    def rel(p) -> str:
        return Path(os.path.relpath(p, run_dir)).as_posix()

    bleu = dict(history.get("val/bleu", []))

    steps_rows = "".join(
        f"<tr><td>{r['step']}</td><td>{_fmt(bleu.get(r['step']))}</td><td>{_fmt(r['entropy'])}</td><td>{_fmt(r['aer'])}</td></tr>"
        for r in records
    ) or "".join(f"<tr><td>{s}</td><td>{_fmt(v)}</td><td></td><td></td></tr>" for s, v in bleu.items())

    sentences, blocks = [], []
    for k, first in enumerate(records[0]["sentences"] if records else []):
        frames = []
        for r in records:
            s = r["sentences"][k]
            frames.append({
                "step": r["step"], "hypothesis": s["hypothesis"], "entropy": s["entropy"], "aer": s["aer"],
                "images": [rel(attention_dir / p) for p in s["images"]],
            })
        sentences.append(frames)
        last = frames[-1]
        gif = ""
        if gif_frames and len(records) > 1:
            gif_path = attention_dir / f"{first['index']:04d}.gif"
            if redraw or not gif_path.is_file():
                write_gif([attention_dir / r["sentences"][k]["images"][0] for r in records], gif_path, gif_frames)
            gif = (
                f'<details><summary>animated GIF</summary><img src="{esc(rel(gif_path))}" '
                f'alt="attention over training, sentence {first["index"]}"></details>'
            )
        images = "".join(
            f'<img id="img{k}_{n}" src="{esc(p)}" alt="attention, sentence {first["index"]}">'
            for n, p in enumerate(last["images"])
        )
        blocks.append(f"""<section class=sentence>
<h3>Sentence {first['index']}</h3>
<p><span class=k>source</span> {esc(first['source'])}<br><span class=k>reference</span> {esc(first['reference'])}<br>
<span class=k>hypothesis</span> <span id="hyp{k}">{esc(last['hypothesis'])}</span></p>
<p><input type=range class=steps data-s="{k}" min=0 max="{len(frames) - 1}" value="{len(frames) - 1}">
step <b id="step{k}">{last['step']}</b>, entropy <span id="ent{k}">{_fmt(last['entropy'])}</span>,
AER <span id="aer{k}">{_fmt(last['aer']) or 'n/a'}</span></p>
{images}
{gif}
</section>""")

    state = "finished" if finished else "in progress"
    summary = "".join(f"<tr><td class=k>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in config_summary(config))
    data = json.dumps({"steps": [r["step"] for r in records], "sentences": sentences}).replace("</", "<\\/")
    text = PAGE.format(
        title=esc(f"attnmt run: {run_dir.name}"), state=state, step=step, summary=summary,
        curves=esc(rel(run_dir / "curves.png")), steps_rows=steps_rows,
        blocks="\n".join(blocks)
        or "<p>No attention monitor records (callbacks.attention_monitor is off, or no validation yet).</p>",
        data=data,
    )
    path = run_dir / "index.html"
    atomic_write_text(path, text)
    return path


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 90em; }}
table {{ border-collapse: collapse; }}
td, th {{ border-bottom: 1px solid #ddd; padding: .3em .6em; text-align: left; vertical-align: top; }}
th {{ background: #f4f4f4; }} .k {{ color: #777; display: inline-block; min-width: 6.5em; }}
img {{ max-width: 100%; display: block; margin: .4em 0; }} input[type=range] {{ width: 30em; max-width: 90%; }}
section.sentence {{ border-top: 1px solid #ccc; margin-top: 1.5em; }}
</style></head><body>
<h1>{title}</h1>
<p>Training {state}, step {step}. This page is rewritten after every validation.</p>
<h2>Config</h2>
<table>{summary}</table>
<p>Full config: <a href="config.yaml">config.yaml</a>.</p>
<h2>Curves</h2>
<img src="{curves}" alt="training curves">
<h2>Validations</h2>
<table id=validations><tr><th>step</th><th>val BLEU</th><th>attention entropy</th><th>AER</th></tr>{steps_rows}</table>
<h2>Attention over training</h2>
<p>Cross-attention of the monitored validation sentences at each validation (greedy output; word level).
Move a slider to flip through the steps; entropy and AER are measured while reading the reference.</p>
{blocks}
<script>
const DATA = {data};
function show(k, i) {{
  const f = DATA.sentences[k][i];
  f.images.forEach((src, n) => {{ const im = document.getElementById(`img${{k}}_${{n}}`); if (im) im.src = src; }});
  document.getElementById(`step${{k}}`).textContent = f.step;
  document.getElementById(`hyp${{k}}`).textContent = f.hypothesis;
  document.getElementById(`ent${{k}}`).textContent = f.entropy.toFixed(3);
  document.getElementById(`aer${{k}}`).textContent = f.aer === null ? "n/a" : f.aer.toFixed(3);
}}
const sliders = document.querySelectorAll("input.steps");
sliders.forEach(el => el.addEventListener("input", () => show(+el.dataset.s, +el.value)));
function fromHash() {{  // index.html#step=N: every slider at validation step N
  const m = location.hash.match(/step=(\\d+)/);
  const i = m ? DATA.steps.indexOf(+m[1]) : -1;
  if (i < 0) return;
  sliders.forEach(el => {{ el.value = i; el.dispatchEvent(new Event("input")); }});
}}
window.addEventListener("hashchange", fromHash);
fromHash();
</script>
</body></html>
"""
