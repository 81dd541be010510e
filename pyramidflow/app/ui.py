"""The page: Gradio Blocks wired to :mod:`pyramidflow.app.handlers`.

Layout: the model list and what the model allows; tabs for the mode (text-to-video, image-to-video
with an upload, text-to-image); the controls; the result (a looping video with its download, or an
image), its settings, and a gallery of this session's results. Every failure is a message in the
page (``gr.Error``): a handler's :class:`AppError` in its own words, anything unexpected as one line
(the traceback goes to the server's log). Generations wait in Gradio's queue, one at a time.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path

from pyramidflow.app.handlers import EXAMPLE_PROMPT, AppError, Request, check_image, generate
from pyramidflow.app.registry import ModelInfo, ModelRegistry

log = logging.getLogger("pyramidflow.app")

TITLE = "pyramidflow"
INTRO = ("Pyramidal flow matching for video generation. Pick a model and a mode, write a prompt, press "
         "**Generate**. Results stay in the gallery below for this session.")
# System fonts only: the page must not fetch anything from outside the server.
FONTS = ["ui-sans-serif", "system-ui", "DejaVu Sans", "sans-serif"]
MONO = ["ui-monospace", "DejaVu Sans Mono", "monospace"]
CSS = "#result-video video, #result-image img, #gallery video, #gallery img { image-rendering: pixelated; }"
MAX_GALLERY = 48


def _error(err: Exception) -> Exception:
    import gradio as gr

    if isinstance(err, (AppError, ValueError, FileNotFoundError)):
        message = str(err)
    else:  # a bug or a resource problem: one line in the page, the traceback in the log
        log.exception("generation failed")
        message = f"generation failed: {type(err).__name__}: {err}".splitlines()[0][:300]
    return gr.Error(html.escape(message), duration=None, print_exception=False)


CONTROLS = ("about", "frames", "height", "width", "steps", "first_steps", "guidance", "video_guidance",
            "negative")


def control_values(info: ModelInfo) -> dict[str, dict]:
    """The model-dependent settings of each control in :data:`CONTROLS` (constructor keywords)."""
    shown = ", ".join(map(str, info.frame_values[:5])) + (", ..." if len(info.frame_values) > 5 else "")
    size = dict(minimum=info.size_step, maximum=info.max_size, step=info.size_step)
    return {
        "about": dict(value=info.summary()),
        "frames": dict(value=info.frames, info=f"valid: {shown} (at most {info.max_frames})"),
        "height": dict(value=info.height, **size),
        "width": dict(value=info.width, **size),
        "steps": dict(value=",".join(map(str, info.steps)),
                      info=f"{info.num_stages} stages, lowest resolution first"),
        "first_steps": dict(value=",".join(map(str, info.first_steps or info.steps)),
                            visible=info.mode == "autoregressive"),
        "guidance": dict(value=info.guidance),
        "video_guidance": dict(value=info.video_guidance),
        "negative": dict(visible=info.negative_prompt),
    }


def settings_markdown(settings: dict) -> str:
    """The settings of a result, compact: ``**key** value · ...`` (escaped)."""
    parts = []
    for key, value in settings.items():
        if value is None or value == "":
            continue
        shown = "-".join(map(str, value)) if isinstance(value, list) else value
        shown = html.escape(str(shown)).replace("*", "&#42;").replace("_", "&#95;")
        parts.append(f"**{key.replace('_', ' ')}** {shown}")
    return " · ".join(parts)


def build_app(registry: ModelRegistry, out_dir: str | Path):
    """The Gradio Blocks of the app (not launched)."""
    import gradio as gr

    out_dir = Path(out_dir)
    first = control_values(registry.info(registry.default))

    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        mode = gr.State("text-to-video")
        history = gr.State([])
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Row():
            model = gr.Dropdown(registry.names, value=registry.default, label="Model", scale=1)
            about = gr.Markdown(elem_id="model-info", **first["about"])
        with gr.Tabs():
            with gr.Tab("Text to video", id="t2v") as tab_t2v:
                gr.Markdown("A clip from the prompt alone.")
            with gr.Tab("Image to video", id="i2v") as tab_i2v:
                with gr.Row():
                    upload = gr.File(label="First frame (an image; resized and centre-cropped)",
                                     file_types=["image"], type="filepath", elem_id="upload", height=140)
                    preview = gr.Image(label="Uploaded image", interactive=False, height=140,
                                       elem_id="preview")
            with gr.Tab("Text to image", id="t2i") as tab_t2i:
                gr.Markdown("One frame from the prompt.")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=2, placeholder=EXAMPLE_PROMPT, elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", **first["negative"])
                with gr.Row():
                    frames = gr.Number(label="Frames", precision=0, elem_id="frames", **first["frames"])
                    height = gr.Slider(label="Height", elem_id="height", **first["height"])
                    width = gr.Slider(label="Width", elem_id="width", **first["width"])
                with gr.Row():
                    steps = gr.Textbox(label="Steps per stage", elem_id="steps", **first["steps"])
                    first_steps = gr.Textbox(label="Steps per stage, first frame",
                                             info="the first unit is generated like an image",
                                             **first["first_steps"])
                with gr.Row():
                    guidance = gr.Slider(0, 20, step=0.5, label="Guidance, first frame", **first["guidance"])
                    video_guidance = gr.Slider(0, 20, step=0.5, label="Guidance, later frames",
                                               **first["video_guidance"])
                with gr.Row():
                    seed = gr.Number(value=0, label="Seed", precision=0, minimum=0, elem_id="seed")
                    random_seed = gr.Checkbox(label="Random seed", value=False)
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                video = gr.Video(label="Result", autoplay=True, loop=True, height=320, interactive=False,
                                 buttons=["download"], elem_id="result-video")
                image = gr.Image(label="Result", visible=False, height=320, interactive=False,
                                 buttons=["download"], elem_id="result-image", format="png")
                settings = gr.Markdown(elem_id="settings")
        gallery = gr.Gallery(label="This session (newest first)", columns=8, height=220, elem_id="gallery",
                             object_fit="contain", interactive=False, allow_preview=True, fit_columns=False)

        controls = [about, frames, height, width, steps, first_steps, guidance, video_guidance, negative]

        def on_model(name):
            try:
                values = control_values(registry.info(name))
            except Exception as err:
                raise _error(err) from None
            return [gr.update(**values[key]) for key in CONTROLS]

        model.change(on_model, model, controls)

        def on_tab(chosen):
            one = chosen == "text-to-image"
            return chosen, gr.update(visible=not one), gr.update(visible=not one)

        tabs = ((tab_t2v, "text-to-video"), (tab_i2v, "image-to-video"), (tab_t2i, "text-to-image"))
        for tab, name in tabs:
            tab.select(lambda name=name: on_tab(name), None, [mode, frames, video_guidance])

        def on_upload(path):
            if path is None:
                return None
            try:
                return str(check_image(path))
            except Exception as err:
                raise _error(err) from None

        upload.change(on_upload, upload, preview)

        def on_generate(name, chosen, text, neg, n, h, w, st, fst, g, vg, s, rnd, img, past,
                        progress=gr.Progress()):  # noqa: B008 (Gradio fills it in per call)
            request = Request(model=name, prompt=text, mode=chosen, negative_prompt=neg, frames=n, height=h,
                              width=w, steps=st, first_steps=fst, guidance=g, video_guidance=vg, seed=s,
                              random_seed=rnd, image=img)
            progress(0, desc="starting")
            try:
                result = generate(registry, request, out_dir,
                                  on_step=lambda i, total: progress(i / total, desc=f"step {i}/{total}"))
            except Exception as err:
                raise _error(err) from None
            past = ([(str(result.path), result.caption)] + list(past))[:MAX_GALLERY]
            is_video = result.kind == "video"
            return (gr.update(value=str(result.path) if is_video else None, visible=is_video),
                    gr.update(value=None if is_video else str(result.path), visible=not is_video),
                    settings_markdown(result.settings), past, past)

        gr.on([button.click, prompt.submit], on_generate,
              [model, mode, prompt, negative, frames, height, width, steps, first_steps, guidance,
               video_guidance, seed, random_seed, upload, history],
              [video, image, settings, gallery, history], concurrency_limit=1, concurrency_id="generate")
    return app


def theme():
    import gradio as gr

    return gr.themes.Default(font=FONTS, font_mono=MONO)
