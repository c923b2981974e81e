"""Make the README pictures in docs/images/ with the tiny random-weight demo model (no downloads).

    python docs/make_images.py            # writes docs/images/sweep_grid.png and docs/images/promptbox.png

The sweep grid is a real ``ck.sweep`` figure. The PromptBox picture is a static HTML rendering of a real
PromptBox's widget state after two generations on the embedded Engine, screenshotted with headless chromium;
it says so in its header, because a live widget needs a Jupyter front end to draw it. The demo checkpoint has
random weights, so the images are coloured noise: the pictures show the tools, not image quality.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import comfykit as ck  # noqa: E402
from comfykit import demo  # noqa: E402

HERE = Path(__file__).resolve().parent
MAX_BYTES = 300_000


def txt2img(ckpt: str, size: int):
    wf = ck.Workflow()
    model, clip, vae = wf.CheckpointLoaderSimple(ckpt_name=ckpt)
    pos = wf.CLIPTextEncode(text="a lighthouse on a cliff at dusk, oil painting", clip=clip)
    neg = wf.CLIPTextEncode(text="blurry, low quality", clip=clip)
    lat = wf.EmptyLatentImage(width=size, height=size, batch_size=1)
    out = wf.KSampler(model=model, positive=pos, negative=neg, latent_image=lat, seed=42, steps=6, cfg=7.0,
                      sampler_name="euler", scheduler="normal")
    wf.SaveImage(images=wf.VAEDecode(samples=out, vae=vae), filename_prefix="readme")
    return wf, pos, neg, out


def sweep_picture(engine, ckpt: str, path: Path, size: int) -> Path:
    wf, pos, neg, out = txt2img(ckpt, size)
    s = ck.sweep(wf, {out.seed: [1, 2, 3], out.steps: [2, 5]}, engine)
    fig = s.figure
    fig.suptitle("ck.sweep(wf, {out.seed: [1, 2, 3], out.steps: [2, 5]}, engine)  ·  tiny random-weight demo model",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path


# -- a static rendering of a PromptBox's widget state -----------------------------------------------------------

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; font-size: 13px; margin: 0;
       background: #fff; color: #222; width: 860px; }
.note { background: #fff8e1; border-bottom: 1px solid #e0c060; padding: 6px 10px; font-size: 11px; color: #6b5500; }
.cell { margin: 10px 14px; }
.prompt { color: #307fc1; font-family: monospace; margin-bottom: 6px; }
.row { display: flex; align-items: center; margin: 3px 0; gap: 6px; }
.lab { width: 110px; text-align: right; padding-right: 6px; color: #333; }
textarea, input, select { font: inherit; border: 1px solid #9e9e9e; padding: 3px 5px; }
textarea { width: 600px; height: 46px; resize: none; }
.slider { width: 300px; height: 4px; background: #ccc; position: relative; border-radius: 2px; }
.knob { position: absolute; top: -6px; width: 12px; height: 12px; border-radius: 6px; background: #fff;
        border: 1px solid #888; }
button { font: inherit; border: 0; padding: 5px 14px; color: #fff; }
.primary { background: #2196f3; } .danger { background: #f44336; opacity: .5; } .plain { background: #eee; color:#222; }
.bar { width: 230px; height: 14px; background: #eee; } .fill { height: 14px; background: #2196f3; }
.tile { display: inline-block; vertical-align: top; border: 1px solid #ddd; padding: 4px; margin: 4px; width: 200px; }
.cap { font-size: 11px; word-wrap: break-word; margin: 3px 0; }
"""


def _img(data: bytes, fmt: str, width: int) -> str:
    return (f'<img width="{width}" style="image-rendering:pixelated" '
            f'src="data:image/{fmt};base64,{base64.b64encode(data).decode()}"/>')


def _field_html(field) -> str:
    wid, name = field.widget, type(field.widget).__name__
    lab = f'<span class="lab">{html.escape(field.label)}</span>'
    if name == "Textarea":
        control = f"<textarea>{html.escape(wid.value)}</textarea>"
    elif name in ("IntSlider", "FloatSlider"):
        pos = 300 * (wid.value - wid.min) / (wid.max - wid.min) - 6
        control = (f'<span class="slider"><span class="knob" style="left:{pos:.0f}px"></span></span>'
                   f"<span>{wid.value}</span>")
    elif name == "Dropdown":
        control = f"<select><option>{html.escape(str(wid.value))}</option></select>"
    else:
        control = f'<input value="{html.escape(str(wid.value))}" size="22"/>'
    if field.control is not None:
        control += f"<select><option>{html.escape(field.control.value)}</option></select>"
        control += '<button class="plain">dice</button>'  # the widget shows an emoji; headless fonts lack it
    return f'<div class="row">{lab}{control}</div>'


def _bar(widget) -> str:
    pct = 100 * widget.value / max(widget.max, 1)
    return (f'<span class="lab" style="width:60px">{html.escape(widget.description)}</span>'
            f'<span class="bar"><span class="fill" style="display:block;width:{pct:.0f}%"></span></span>')


def promptbox_html(box, code: str) -> str:
    """HTML drawing the box's current widget values the way the Jupyter widgets look."""
    gallery = "".join(
        f'<div class="tile">{_img(bytes(e.thumb.value), "png", 200)}'
        f'<div class="cap">{e.label.value}</div><button class="plain">Save</button></div>'
        for e in reversed(box.gallery.entries))
    return f"""<html><head><meta charset="utf-8"><style>{_CSS}</style></head><body>
<div class="note">Static rendering of a live <b>ck.ui.PromptBox</b>'s widget state (docs/make_images.py): real values,
preview and gallery from the embedded Engine on the tiny random-weight demo model; drawn without a Jupyter front end.</div>
<div class="cell"><div class="prompt">{html.escape(code)}</div>
{"".join(_field_html(f) for f in box.fields)}
<div class="row"><span class="lab"></span><button class="primary">▶ Generate</button>
<button class="danger">■ Stop</button>{box.status.value}</div>
<div class="row">{_bar(box.nodes_progress)}{_bar(box.progress)}</div>
<div class="row"><span class="lab"></span>{_img(bytes(box.preview.value), box.preview.format, 256)}</div>
<div>{gallery}</div></div></body></html>"""


def promptbox_picture(engine, ckpt: str, path: Path, size: int) -> Path:
    wf, pos, neg, out = txt2img(ckpt, size)
    box = ck.ui.PromptBox(wf, engine, fields=[pos.text, neg.text, out.seed, out.steps, out.cfg,
                                              out.sampler_name])
    box.field(out.seed).control.value = "increment"
    for _ in range(2):
        box.click()
        if box.wait() is None:
            raise RuntimeError(f"generation failed: {box.error_message}")
    code = "ck.ui.PromptBox(wf, engine, fields=[pos.text, neg.text, out.seed, out.steps, out.cfg, out.sampler_name])"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        raise SystemExit("no chromium found: apt-get install chromium (Debian) to screenshot the PromptBox")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "promptbox.html"
        page.write_text(promptbox_html(box, code), encoding="utf-8")
        shot = Path(tmp) / "shot.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--screenshot={shot}", "--window-size=860,900", page.as_uri()],
                       check=True, capture_output=True, timeout=120)
        _shrink_png(shot, path)
    return path


def _shrink_png(src: Path, dst: Path) -> None:
    """Crop the white margin below the content and quantize, so the file stays small."""
    from PIL import Image, ImageChops

    with Image.open(src) as im:
        im = im.convert("RGB")
        box = ImageChops.difference(im, Image.new("RGB", im.size, (255, 255, 255))).getbbox()
        if box:
            im = im.crop((0, 0, im.width, min(im.height, box[3] + 12)))
        buf = io.BytesIO()
        im.quantize(colors=256).save(buf, format="PNG", optimize=True)
    dst.write_bytes(buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "images")
    parser.add_argument("--size", type=int, default=64, help="image size in pixels (the demo model is slow on CPU)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        ckpt = demo.ensure_demo_checkpoint(models)
        with ck.Engine(models, output_dir=Path(tmp) / "output", temp_dir=Path(tmp) / "temp") as engine:
            made = [sweep_picture(engine, ckpt, args.out / "sweep_grid.png", args.size),
                    promptbox_picture(engine, ckpt, args.out / "promptbox.png", args.size)]
    for path in made:
        size = path.stat().st_size
        print(f"{path}  {size / 1000:.0f} KB")
        if size > MAX_BYTES:
            raise SystemExit(f"{path} is {size} bytes, over the {MAX_BYTES} byte budget for README pictures")


if __name__ == "__main__":
    main()
