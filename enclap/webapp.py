"""The web demo: caption a recording in the browser, see its windows, its picture and its tags; search a folder.

    python gradio_app.py [--ckpt DIR] [--clap SPEC] [--index DIR] [--search-folder FOLDER]
                         [--host 127.0.0.1] [--port 7860] [--share]
    enclap-web ...                      # the same

With no arguments after ``make demo`` it loads the demo's captioner (``runs/demo/captioner/best``,
which names its EnCodec and CLAP) and indexes the demo's test recordings for the search tab.

Everything runs through the library: captions and per-window captions come from
:meth:`enclap.pipeline.CaptioningPipeline.caption_timed`, tags from
:class:`enclap.features.clap_text.ZeroShotTagger`, search from :mod:`enclap.search`. This module only
arranges them on a page. :class:`WebDemo` holds the handlers (plain Python, testable without a
server); :func:`build_demo` lays out the Gradio page; :func:`launch` serves it.

Safety and offline use: the server binds to 127.0.0.1 unless ``--host`` says otherwise, a public
share link is made only with ``--share``, Gradio's analytics are switched off before Gradio is
imported, and the page uses system fonts only, so it loads nothing from outside the machine. Uploads
are limited in size (``--max-file-size``), requests queue with a concurrency limit (``--concurrency``),
and a bad, empty or silent upload gets a readable message in the page, never a stack trace.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import AudioError, EnclapError

if TYPE_CHECKING:
    import gradio as gr

    from .features.clap_text import TextEmbedder, ZeroShotTagger
    from .pipeline import CaptioningPipeline, TimedCaptionResult
    from .search import SearchIndex

logger = logging.getLogger(__name__)

DEMO_CHECKPOINT = Path("runs/demo/captioner/best")
DEMO_INDEX = Path("runs/demo/search-index")
DEMO_SEARCH_FOLDER = Path("runs/demo/data/audio/test")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_FILE_SIZE = "500mb"
TAG_SECONDS = 30.0  # zero-shot tags describe the first TAG_SECONDS of a recording
SILENCE_DBFS = -60.0  # a recording whose peak is below this is called silent
PICTURE_SAMPLE_RATE = 16_000
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif")
SYSTEM_MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")


# ------------------------------------------------------------------------------------------- picture


def format_time(seconds: float) -> str:
    """``m:ss.s`` (``h:mm:ss.s`` from an hour on)."""
    tenths = int(round(float(seconds) * 10))
    hours, rest = divmod(tenths, 36000)
    minutes, rest = divmod(rest, 600)
    text = f"{minutes:02d}:{rest / 10:04.1f}" if hours else f"{minutes}:{rest / 10:04.1f}"
    return f"{hours}:{text}" if hours else text


@dataclass
class SoundPicture:
    """What :func:`draw_sound` found while streaming a file: its peak and length, and where the PNG is."""

    path: Path
    peak: float
    duration: float

    @property
    def peak_dbfs(self) -> float:
        return 20 * np.log10(max(self.peak, 1e-12))


def draw_sound(source: str | os.PathLike, out_png: str | os.PathLike, *, columns: int = 1200, n_mels: int = 64) -> SoundPicture:
    """Waveform envelope and log-mel spectrogram of an audio file, as one PNG, in bounded memory.

    The file is streamed at 16 kHz; the envelope keeps a min/max per column and the spectrogram one
    frame per column, so a one-hour recording costs what a short one does.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt
    from transformers.audio_utils import mel_filter_bank

    from .audio import audio_info, stream_audio

    info = audio_info(source)
    rate = PICTURE_SAMPLE_RATE
    total = max(1, int(info.duration * rate))
    n_fft = 512
    hop = max(1, total // columns)
    filters = mel_filter_bank(n_fft // 2 + 1, n_mels, 20.0, rate / 2, rate, norm="slaney", mel_scale="slaney")
    window = np.hanning(n_fft).astype(np.float32)
    envelope: list[tuple[float, float]] = []
    mel_frames: list[np.ndarray] = []
    carry = np.zeros(0, dtype=np.float32)
    peak = 0.0
    seen = 0
    for block in stream_audio(source, rate):
        peak = max(peak, float(np.abs(block).max(initial=0.0)))
        seen += block.shape[0]
        carry = np.concatenate([carry, block])
        while carry.shape[0] >= max(hop, n_fft):
            piece = carry[:hop]
            envelope.append((float(piece.min()), float(piece.max())))
            frame = carry[:n_fft] * window
            mel_frames.append(filters.T @ (np.abs(np.fft.rfft(frame)) ** 2))
            carry = carry[hop:]
    if carry.size:  # the tail: shorter than a frame, zero-padded
        envelope.append((float(carry.min()), float(carry.max())))
        frame = np.zeros(n_fft, dtype=np.float32)
        frame[: min(n_fft, carry.size)] = carry[:n_fft]
        mel_frames.append(filters.T @ (np.abs(np.fft.rfft(frame * window)) ** 2))
    duration = seen / rate
    env = np.asarray(envelope, dtype=np.float32).reshape(-1, 2)
    mel_db = 10 * np.log10(np.maximum(np.stack(mel_frames, axis=1), 1e-10)) if mel_frames else np.zeros((n_mels, 1))
    fig, (ax_wave, ax_mel) = plt.subplots(2, 1, figsize=(10, 4.2), sharex=True, gridspec_kw={"height_ratios": [1, 1.6]})
    times = np.linspace(0, duration, num=max(env.shape[0], 1))
    ax_wave.fill_between(times, env[:, 0] if env.size else [0], env[:, 1] if env.size else [0], color="#e07b00", linewidth=0.5)
    ax_wave.set_ylim(-1.05, 1.05)
    ax_wave.set_ylabel("amplitude")
    ax_wave.set_title(f"{Path(info.path).name}  ·  {format_time(duration)}  ·  {info.sample_rate} Hz, {info.channels} ch", fontsize=9)
    top = float(mel_db.max())
    ax_mel.imshow(mel_db, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top, extent=(0, duration, 0, n_mels))
    ax_mel.set_ylabel("mel band")
    ax_mel.set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=96)
    plt.close(fig)
    return SoundPicture(Path(out_png), peak, duration)


# ------------------------------------------------------------------------------------------ handlers


@dataclass
class CaptionOutput:
    """What the caption tab shows for one upload."""

    status: str  # Markdown: what happened, or why nothing could be done
    caption: str
    windows: list[list[str]]  # [start, end, caption] rows
    picture: str | None  # PNG path
    tags: dict[str, float] | None  # label -> probability
    downloads: list[str] = field(default_factory=list)  # SRT, WebVTT and JSON files of the timed captions


class WebDemo:
    """The handlers behind the page: a pipeline, optionally a tagger and a search index."""

    def __init__(
        self,
        pipeline: "CaptioningPipeline",
        *,
        tagger: "ZeroShotTagger | None" = None,
        tags_unavailable: str | None = None,
        index: "SearchIndex | None" = None,
        search_text_embedder: "TextEmbedder | None" = None,
        search_unavailable: str | None = None,
        window: float | None = None,
        hop: float | None = None,
        workdir: str | os.PathLike | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.tagger = tagger
        self.tags_unavailable = tags_unavailable
        self.index = index
        self.search_text_embedder = search_text_embedder
        self.search_unavailable = search_unavailable
        self.window = window
        self.hop = hop
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="enclap-web-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._requests = 0  # captioned uploads: names each one's picture and downloads

    # -- caption tab
    def caption(self, path: str | None) -> CaptionOutput:
        """Caption one uploaded or recorded file; every failure becomes a message, never an exception."""
        if not path:
            return CaptionOutput("Upload a recording or record one first, then press **Caption**.", "", [], None, None)
        name = Path(path).name
        try:
            return self._caption(path, name)
        except (AudioError, EnclapError, ValueError) as err:
            reason = err.reason if isinstance(err, AudioError) else str(err)
            return CaptionOutput(f"**Could not caption `{name}`:** {reason}", "", [], None, None)
        except Exception as err:  # the page shows a sentence; the log keeps the traceback
            logger.exception("captioning %s failed", path)
            return CaptionOutput(f"**Something went wrong while captioning `{name}`:** {type(err).__name__}: {err}", "", [], None, None)

    def _caption(self, path: str, name: str) -> CaptionOutput:
        from .audio import audio_info

        info = audio_info(path)  # header problems fail here, before any model runs
        if info.frames == 0:
            raise AudioError(path, "the file holds no audio (0 samples)")
        self._requests += 1
        picture = draw_sound(path, self.workdir / f"sound-{self._requests}.png")
        result = self.pipeline.caption_timed([path], self.window, self.hop)[0]
        if result.error:
            return CaptionOutput(f"**Could not caption `{name}`:** {result.error}", "", [], str(picture.path), None)
        rows = [[format_time(w.start), format_time(w.end), w.caption] for w in result.windows]
        notes = [f"Captioned **{name}** ({format_time(result.duration or picture.duration)}, "
                 f"{len(rows)} window{'s' if len(rows) != 1 else ''})."]
        if picture.peak_dbfs < SILENCE_DBFS:
            notes.append(
                f"⚠ This recording is silent or nearly so (peak {picture.peak_dbfs:.0f} dBFS): "
                "the caption says what the model makes of silence."
            )
        tags = None
        if self.tagger is not None:
            tags = self._tags(path)
            if (result.duration or 0) > TAG_SECONDS:
                notes.append(f"Tags describe the first {TAG_SECONDS:.0f} s.")
        return CaptionOutput(" ".join(notes), result.caption or "", rows, str(picture.path), tags, self._downloads(result, name))

    def _downloads(self, result: "TimedCaptionResult", name: str) -> list[str]:
        """The timed captions as SRT, WebVTT and JSON files named like the upload (one folder per request)."""
        from .caption_formats import render, write_text

        result = replace(result, source=name)  # the upload's name, not the server's temporary path
        folder = self.workdir / f"captions-{self._requests}"
        folder.mkdir(parents=True, exist_ok=True)
        stem = Path(name).stem or "recording"
        files = []
        for fmt in ("srt", "vtt", "json"):
            target = folder / f"{stem}.{fmt}"
            write_text(target, render([result], fmt))
            files.append(str(target))
        return files

    def _tags(self, path: str, top: int = 5) -> dict[str, float]:
        from .audio import load_audio

        clap = self.pipeline._require_features().clap
        samples, _ = load_audio(path, clap.sample_rate, max_seconds=TAG_SECONDS)
        embedding = clap.embed([samples])[0]
        return {label: prob for label, _, prob in self.tagger.tag(embedding, top)}

    # -- search tab
    def search(self, query: str, top: int = 10) -> tuple[str, list[list[Any]], list[str]]:
        """(status, [rank, score, file] rows, paths best first) for a description."""
        if self.index is None or self.search_text_embedder is None:
            return self.search_unavailable or "No search index is loaded.", [], []
        if not query or not query.strip():
            return "Type a description, e.g. *a dog barks*, then press **Search**.", [], []
        from .search import search_text

        try:
            hits = search_text(self.index, self.search_text_embedder, [query.strip()], max(1, int(top)))[0]
        except (EnclapError, ValueError) as err:
            return f"**Search failed:** {err}", [], []
        except Exception as err:
            logger.exception("search for %r failed", query)
            return f"**Something went wrong while searching:** {type(err).__name__}: {err}", [], []
        rows = [[hit.rank, round(hit.score, 4), hit.relative] for hit in hits]
        status = f"{len(hits)} best of {len(self.index)} indexed files for *{query.strip()}* (cosine similarity, exact)."
        return status, rows, [hit.path for hit in hits]


# --------------------------------------------------------------------------------------------- page


def _ensure_gradio_offline() -> None:
    # Must be set before gradio is imported: gradio reads it at import time.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


def system_font_theme() -> "gr.themes.Base":
    """Gradio's default look with system fonts only: no font file is fetched from anywhere."""
    _ensure_gradio_offline()
    import gradio as gr

    return gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(SYSTEM_MONO_FONTS))


def build_demo(app: WebDemo, *, title: str = "EnCLAP audio captioning") -> "gr.Blocks":
    """The page: a caption tab and a search tab over ``app``'s handlers."""
    _ensure_gradio_offline()
    import gradio as gr

    def on_caption(path: str | None):
        out = app.caption(path)
        return (
            out.status,
            out.caption,
            gr.update(value=out.windows, visible=bool(out.windows)),
            out.picture,
            gr.update(value=out.tags, visible=out.tags is not None),
            gr.update(value=out.downloads or None, visible=bool(out.downloads)),
        )

    def on_search(query: str, top: float):
        status, rows, paths = app.search(query, int(top))
        choices = [(f"{row[0]}. {row[2]}  ({row[1]:+.3f})", path) for row, path in zip(rows, paths)]
        return (
            status,
            gr.update(value=rows, visible=bool(rows)),
            gr.update(choices=choices, value=paths[0] if paths else None, visible=bool(paths)),
            paths[0] if paths else None,
        )

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"# {title}\nUpload or record a sound and get a caption: for a long recording, one per window with its "
            "times. The search tab finds sounds in an indexed folder from a description."
        )
        with gr.Tab("Caption", id="caption-tab"):
            with gr.Row():
                with gr.Column(scale=1):
                    audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Recording", elem_id="audio-input")
                    caption_button = gr.Button("Caption", variant="primary", elem_id="caption-button")
                with gr.Column(scale=1):
                    status = gr.Markdown("Upload a recording or record one, then press **Caption**.", elem_id="caption-status")
                    caption = gr.Textbox(label="Caption", interactive=False, elem_id="caption-text")
                    tags = gr.Label(label="Zero-shot tags (CLAP)", num_top_classes=5, visible=False, elem_id="tags")
                    if app.tagger is None and app.tags_unavailable:
                        gr.Markdown(f"*Zero-shot tags are off: {app.tags_unavailable}*", elem_id="tags-off")
            windows = gr.Dataframe(
                headers=["start", "end", "caption"], datatype=["str", "str", "str"], label="Captions by window",
                interactive=False, visible=False, wrap=True, elem_id="windows", column_widths=["10%", "10%", "80%"],
            )
            downloads = gr.File(
                label="Captions as subtitles (SRT, WebVTT) and JSON", file_count="multiple", interactive=False,
                visible=False, elem_id="downloads",
            )
            picture = gr.Image(label="Waveform and log-mel spectrogram", type="filepath", interactive=False, elem_id="picture")
        caption_button.click(
            on_caption, inputs=audio, outputs=[status, caption, windows, picture, tags, downloads], api_name="caption",
        )
        with gr.Tab("Search", id="search-tab"):
            if app.index is None or app.search_text_embedder is None:
                gr.Markdown(app.search_unavailable or "No search index is loaded.", elem_id="search-off")
            else:
                gr.Markdown(f"Searching **{len(app.index)}** files of `{app.index.folder}` (CLAP `{app.index.clap}`).")
            with gr.Row():
                query = gr.Textbox(label="Describe a sound", placeholder="a dog barks", scale=4, elem_id="search-query")
                top = gr.Slider(1, 50, value=10, step=1, label="results", scale=1, elem_id="search-top")
            search_button = gr.Button("Search", variant="primary", elem_id="search-button")
            search_status = gr.Markdown("", elem_id="search-status")
            results = gr.Dataframe(
                headers=["rank", "score", "file"], datatype=["number", "number", "str"], label="Results",
                interactive=False, visible=False, elem_id="search-results",
            )
            choose = gr.Dropdown(label="Play a result", choices=[], visible=False, elem_id="search-choose")
            player = gr.Audio(label="Result", type="filepath", interactive=False, elem_id="search-player")
        search_button.click(on_search, inputs=[query, top], outputs=[search_status, results, choose, player], api_name="search")
        query.submit(on_search, inputs=[query, top], outputs=[search_status, results, choose, player])
        choose.change(lambda path: path, inputs=choose, outputs=player, api_name=False)
    return demo


# -------------------------------------------------------------------------------------------- loading


@dataclass
class WebOptions:
    """The command line of :func:`main`."""

    ckpt: str | None = None
    clap: str | None = None
    encodec: str | None = None
    index: str | None = None
    search_folder: str | None = None
    labels: str | None = None
    device: str = "auto"
    window: float | None = None
    hop: float | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    share: bool = False
    max_file_size: str = DEFAULT_MAX_FILE_SIZE
    concurrency: int = 1


def build_app(options: WebOptions) -> WebDemo:
    """Load the pipeline, the tagger and the search index the options name (with the demo's defaults)."""
    from .features.clap_text import ZeroShotTagger, load_text_embedder, read_labels, text_embedder_for
    from .pipeline import CaptioningPipeline
    from .search import SearchIndex, clap_spec_for_index, update_index

    demo_defaults = options.ckpt is None
    ckpt = Path(options.ckpt) if options.ckpt else DEMO_CHECKPOINT
    if not ckpt.exists():
        hint = "run `make demo` first (it trains one under runs/demo/), or " if demo_defaults else ""
        raise EnclapError(f"no captioner at {ckpt}: {hint}pass --ckpt DIR")
    pipeline = CaptioningPipeline.from_pretrained(ckpt, clap=options.clap, encodec=options.encodec, device=options.device)
    audio_clap = pipeline._require_features().clap

    tagger, tags_off, pipeline_text = None, None, None
    try:
        pipeline_text = text_embedder_for(audio_clap)
        tagger = ZeroShotTagger(pipeline_text, read_labels(options.labels))
    except (EnclapError, OSError, AttributeError) as err:
        if options.labels:  # asked for explicitly: an error, not a silent omission
            raise
        tags_off = f"the CLAP '{pipeline.settings.clap}' has no usable text tower ({err})"

    index_dir = options.index or (str(DEMO_INDEX) if demo_defaults else None)
    folder = options.search_folder or (str(DEMO_SEARCH_FOLDER) if demo_defaults and DEMO_SEARCH_FOLDER.is_dir() else None)
    index, search_text_embedder, search_off = None, None, None
    if index_dir and folder:  # bring the index up to date with the folder (only new or changed files are embedded)
        report = update_index(folder, index_dir, audio_clap, clap=pipeline.settings.clap, progress=True)
        logger.info("search index %s: %d files (%d new)", index_dir, report.total, len(report.added))
    if index_dir and Path(index_dir, "index.json").is_file():
        index = SearchIndex(index_dir)
        if clap_spec_for_index(pipeline.settings.clap) == clap_spec_for_index(index.clap) and pipeline_text is not None:
            search_text_embedder = pipeline_text
        else:
            try:
                search_text_embedder = load_text_embedder(index.clap, str(pipeline.device))
            except (EnclapError, OSError) as err:
                search_off = f"The index {index_dir} was built with CLAP `{index.clap}`, whose text tower cannot be loaded: {err}"
    elif index_dir:
        search_off = f"No search index at `{index_dir}`: build one with `enclap-search index FOLDER --index {index_dir}`."
    else:
        search_off = "No search index: start with `--index DIR` (built by `enclap-search index FOLDER --index DIR`)."
    return WebDemo(
        pipeline, tagger=tagger, tags_unavailable=tags_off, index=index, search_text_embedder=search_text_embedder,
        search_unavailable=search_off, window=options.window, hop=options.hop,
    )


def launch(app: WebDemo, options: WebOptions, *, block: bool = True) -> "gr.Blocks":
    """Serve the page on ``options.host:options.port`` (127.0.0.1 unless told otherwise)."""
    demo = build_demo(app)
    demo.queue(default_concurrency_limit=max(1, int(options.concurrency)), max_size=32)
    allowed = [str(app.index.folder)] if app.index is not None else []
    demo.launch(
        server_name=options.host,
        server_port=options.port,
        share=bool(options.share),  # never implied by the environment
        max_file_size=options.max_file_size,
        allowed_paths=allowed,
        theme=system_font_theme(),
        footer_links=["api", "settings"],
        run_history=False,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        show_error=False,
        prevent_thread_lock=not block,
        quiet=False,
    )
    return demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enclap-web", description="The EnCLAP web demo (Gradio), served on this machine.")
    parser.add_argument("--ckpt", default=None, help=f"captioner checkpoint directory (default: {DEMO_CHECKPOINT}, from `make demo`)")
    parser.add_argument("--clap", default=None, help="CLAP instead of the checkpoint's (hub id, HF directory or LAION .pt)")
    parser.add_argument("--encodec", default=None, help="EnCodec instead of the checkpoint's")
    parser.add_argument("--index", default=None, help=f"search index directory (default with the demo: {DEMO_INDEX})")
    parser.add_argument("--search-folder", default=None,
                        help=f"index this folder into --index at start-up (incremental; default with the demo: {DEMO_SEARCH_FOLDER})")
    parser.add_argument("--labels", default=None, help="zero-shot tag labels, one per line (default: the 50 ESC-50 classes)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--window", type=float, default=None, help="seconds per captioned window (default: the encoder's)")
    parser.add_argument("--hop", type=float, default=None, help="seconds between window starts (default: the window)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link (off unless asked)")
    parser.add_argument("--max-file-size", default=DEFAULT_MAX_FILE_SIZE, help="upload limit, e.g. 200mb (default 500mb)")
    parser.add_argument("--concurrency", type=int, default=1, help="requests run at once; the rest queue (default 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _ensure_gradio_offline()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = WebOptions(**vars(args))
    try:
        app = build_app(options)
    except EnclapError as err:
        print(f"enclap-web: error: {err}", file=sys.stderr)
        return 2
    launch(app, options, block=True)
    return 0


__all__ = ["CaptionOutput", "WebDemo", "WebOptions", "build_app", "build_demo", "draw_sound", "format_time", "launch", "main"]
