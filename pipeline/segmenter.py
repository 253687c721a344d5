"""The public segmenter: images in, label maps out, with crops of many images batched together.

    seg = Segmenter.build(get_preset("voc21"), ModelConfig(pretrained="openai"))
    result = seg.segment([rgb])[0]          # SegmentationResult at the original size
    logits = seg.dense_logits(x)            # (B, Q, H, W) cosine logits before the final resize
"""
from __future__ import annotations

import threading
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import ModelConfig, SegmenterConfig, crops_per_forward_for
from pipeline.kernels import native
from pipeline.kernels.pamr import pamr
from pipeline.method.dense import DenseParams, crop_logits
from pipeline.method.device_post import DeviceResult, postprocess_on_device, to_host
from pipeline.method.postprocess import PostParams, SegmentationResult, postprocess
from pipeline.method.preprocess import MEAN, STD, ImageError, check_image, normalise, resize_for_config
from pipeline.method.sliding_window import LogitAccumulator, Window, windows
from pipeline.model.clip import vision_parts
from pipeline.model.text import TextEmbeddings
from pipeline.model.vocabulary import Vocabulary
from pipeline.prepare import Prepared, prepare, provenance

__all__ = ["Segmenter", "SegmentationResult"]


class Segmenter:
    """A CLIP model, a vocabulary's text embeddings and a ``SegmenterConfig``; built once, reused."""

    def __init__(self, config: SegmenterConfig, model_config: ModelConfig, model: torch.nn.Module,
                 weights_digest: str, vocabulary: Vocabulary, text: TextEmbeddings):
        self.config = config
        self.model_config = model_config
        self.model = model
        self.vision = vision_parts(model)
        self.weights_digest = weights_digest
        self.vocabulary = vocabulary
        self.text = text
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self._text = text.embeddings.to(device=self.device, dtype=torch.float32)  # (Q, E); logits are float32
        self.dense_params = DenseParams.from_config(config)
        self.crops_per_forward = crops_per_forward_for(config, self.device.type)  # None in the config: per device
        self.post_params = PostParams(logit_scale=config.logit_scale, prob_thd=config.prob_thd,
                                      area_thd=config.area_thd, query_to_class=vocabulary.query_to_class,
                                      num_classes=vocabulary.num_classes)
        self._local = threading.local()  # per calling thread: .out, the output buffer of _run
        self._norm = (torch.tensor(MEAN).view(1, 3, 1, 1).to(self.device),
                      torch.tensor(STD).view(1, 3, 1, 1).to(self.device))  # (1, 3, 1, 1) each, uploaded once
        self._counts: Dict[Tuple[int, int, Tuple[Window, ...]], torch.Tensor] = {}  # see _window_count
        if self.device.type == "cpu" and (self.dense_params.variant.sfr or config.pamr_steps > 0):
            native.kernel()  # build or load the fused PAMR kernel now, not inside the first batch

    @classmethod
    def from_prepared(cls, prepared: Prepared) -> "Segmenter":
        p = prepared
        return cls(p.config, p.model_config, p.model, p.weights_digest, p.vocabulary, p.text)

    @classmethod
    def build(cls, config: SegmenterConfig, model: ModelConfig, *, vocabulary: Optional[Vocabulary] = None,
              text_embeddings: Optional[TextEmbeddings] = None, text_cache: Optional[str] = None) -> "Segmenter":
        """``pipeline.prepare.prepare`` (validate, vocabulary, model, text embeddings given, cached or computed),
        then the segmenter."""
        return cls.from_prepared(prepare(config, model, vocabulary=vocabulary, text_embeddings=text_embeddings,
                                         text_cache=text_cache))

    @property
    def class_names(self) -> List[str]:
        return list(self.vocabulary.class_names)

    def provenance(self) -> Dict[str, str]:
        """Columns that identify how labels were made (all strings; see ``pipeline.prepare.provenance``)."""
        return provenance(self.config, self.model_config, self.weights_digest, self.vocabulary)

    # ---- dense logits -------------------------------------------------------------------------
    def _buffer(self, shape: Tuple[int, ...]) -> torch.Tensor:
        """The reused (B, Q, h, w) float32 output buffer of ``_run`` (one shape kept: a whole-image batch at
        150 queries is ~100 MB, and fresh memory of that size costs more in page faults than the
        upsampling's arithmetic). One per calling thread, so threads sharing a segmenter never share it."""
        buf = getattr(self._local, "out", None)
        if buf is None or tuple(buf.shape) != shape:
            self._local.out = None  # free the old one first
            buf = self._local.out = torch.empty(shape, dtype=torch.float32, device=self.device)
        return buf

    def _run(self, crops: torch.Tensor) -> torch.Tensor:
        """Crops (B, 3, h, w) normalised → logits (B, Q, h, w) float32 on CPU, padding if configured.

        On CPU the result is a view of a buffer that the next call overwrites: consume it first."""
        h, w = crops.shape[-2:]
        ph, pw = self.vision.patch_size
        if self.config.pad_to_patch and (h % ph or w % pw):
            dh, dw = (-h) % ph, (-w) % pw  # ClearCLIP: zero-pad, extra pixel at bottom/right
            crops = F.pad(crops, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
        buf = self._buffer((crops.shape[0], self.vocabulary.num_queries) + tuple(crops.shape[-2:]))
        out = crop_logits(self.vision, crops.to(self.device, self.dtype), self._text, self.dense_params, out=buf)
        if self.config.pad_to_patch and (h % ph or w % pw):
            out = out[..., dh // 2: dh // 2 + h, dw // 2: dw // 2 + w]
        return out.cpu()

    def _dense_many(self, images: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Normalised images, each (3, H, W) → averaged logits, each (Q, H, W); crops batched across images."""
        c = self.config
        q = self.vocabulary.num_queries
        jobs: Dict[Tuple[int, int], List[Tuple[int, Window]]] = defaultdict(list)
        accs = []
        for i, img in enumerate(images):
            _, h, w = img.shape
            wins = windows(h, w, c.slide_crop, c.slide_stride) if c.slide_crop > 0 else [(0, h, 0, w)]
            accs.append(LogitAccumulator(q, h, w))
            for win in wins:
                jobs[(win[1] - win[0], win[3] - win[2])].append((i, win))
        for shape_jobs in jobs.values():
            for b0 in range(0, len(shape_jobs), self.crops_per_forward):
                chunk = shape_jobs[b0:b0 + self.crops_per_forward]
                crops = torch.stack([images[i][:, y1:y2, x1:x2] for i, (y1, y2, x1, x2) in chunk])
                for (i, win), logit in zip(chunk, self._run(crops)):
                    accs[i].add(win, logit)
        return [a.average() for a in accs]

    def dense_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) → per-query cosine logits (B, Q, H, W) before the final
        resize: the sliding-window average, or the whole-image forward upsampled to (H, W)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ImageError(f"dense_logits expects (B, 3, H, W), got {tuple(x.shape)}")
        self._check_size(tuple(x.shape[-2:]), "input tensor")
        with torch.inference_mode():
            return torch.stack(self._dense_many(list(x.float().cpu())))

    # ---- full pipeline ------------------------------------------------------------------------
    def _check_size(self, hw: Tuple[int, int], name: str) -> None:
        ph, pw = self.vision.patch_size
        if hw[0] < ph or hw[1] < pw:
            raise ImageError(f"{name}: size {hw[0]}x{hw[1]} after resizing is smaller than one {ph}x{pw} patch")

    def postprocess(self, logits: torch.Tensor, orig_hw: Tuple[int, int], image: Optional[torch.Tensor] = None,
                    return_probs: bool = False, return_confidence: bool = False) -> SegmentationResult:
        """Averaged logits (Q, h, w) of one image → labels at ``orig_hw``. ``image`` (3, h, w), the
        normalised resized image, is needed only for the final PAMR (``pamr_steps > 0``)."""
        c = self.config
        if c.pamr_steps > 0:
            if image is None:
                raise ValueError("pamr_steps > 0 needs the normalised image")
            guide = F.interpolate(image[None].float(), size=orig_hw, mode="bilinear", align_corners=False)
            full = F.interpolate(logits[None].float(), size=orig_hw, mode="bilinear", align_corners=False)
            logits = pamr(guide, full, c.pamr_steps, c.pamr_dilations)[0]
        return postprocess(logits, orig_hw, self.post_params, return_probs, return_confidence=return_confidence)

    def segment_prepared(self, resized: Sequence[np.ndarray], orig_sizes: Sequence[Tuple[int, int]],
                         return_probs: bool = False, names: Optional[Sequence[str]] = None,
                         return_confidence: bool = False) -> List[SegmentationResult]:
        """Images already resized by ``resize_for_config`` (RGB uint8) → results at ``orig_sizes`` (H, W).

        On the CPU with the C++ kernel: the CPU path below. Elsewhere (a GPU, or ``RESLABEL_PAMR_KERNEL=torch``):
        the device path, :meth:`segment_on_device` then one copy back per output (:func:`device_post.to_host`)."""
        names = list(names) if names is not None else [f"image {i}" for i in range(len(resized))]
        for img, name in zip(resized, names):
            check_image(img, name)
            self._check_size(img.shape[:2], name)
        with torch.inference_mode():
            if self.device_path:
                return to_host(self.segment_on_device(resized, orig_sizes, return_probs, return_confidence))
            tensors = [normalise(img) for img in resized]
            if self.config.slide_crop == 0 and self.config.direct_resize:
                logits = self._whole_grid_logits(tensors)
            else:
                logits = self._dense_many(tensors)
            return [self.postprocess(lg, tuple(hw), img, return_probs, return_confidence)
                    for lg, hw, img in zip(logits, orig_sizes, tensors)]

    # ---- device path (GPU; the torch path on CPU) ------------------------------------------------
    @property
    def device_path(self) -> bool:
        """Whether ``segment`` runs device-resident: always off the CPU, on the CPU when the C++ kernel is not
        used (``RESLABEL_PAMR_KERNEL=torch`` or no compiler): the kernel's CPU path keeps its own code."""
        return native.for_device(self.device, None) is None

    def upload(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Same-size RGB uint8 images (H, W, 3) → normalised (B, 3, H, W) float32 on the model's device: one
        host-to-device copy of the uint8 pixels (pinned and ``non_blocking`` on CUDA), normalised there."""
        batch = torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in images]))  # (B, H, W, 3)
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        x = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        mean, std = self._norm
        return (x - mean) / std

    def segment_on_device(self, resized: Sequence[np.ndarray], orig_sizes: Sequence[Tuple[int, int]],
                          return_probs: bool = False, return_confidence: bool = False) -> List[DeviceResult]:
        """The device path up to the compact outputs, which stay on the model's device (see ``to_host``).

        Images are grouped by resized shape (no padding: it would change labels); each group is uploaded once
        and its crops (whole images, or sliding windows) run ``crops_per_forward`` at a time; window averaging,
        resizes, SFR (preliminary labels, path check), PAMR, softmax, argmax and class statistics all run on the
        device. Nothing is read back to the host in between (tested: ``tests/test_device_path.py``)."""
        with torch.inference_mode():
            return self._segment_on_device(resized, orig_sizes, return_probs, return_confidence)

    def _segment_on_device(self, resized: Sequence[np.ndarray], orig_sizes: Sequence[Tuple[int, int]],
                           return_probs: bool, return_confidence: bool) -> List[DeviceResult]:
        out: List[Optional[DeviceResult]] = [None] * len(resized)
        groups: Dict[Tuple[int, int], List[int]] = defaultdict(list)
        for i, img in enumerate(resized):
            groups[tuple(img.shape[:2])].append(i)
        for (h, w), idx in groups.items():
            x = self.upload([resized[i] for i in idx])  # (G, 3, h, w)
            logits = self._group_logits(x)  # (G, Q, h', w')
            for j, i in enumerate(idx):
                out[i] = self._post_device(logits[j], tuple(orig_sizes[i]), x[j], return_probs, return_confidence)
        return out  # type: ignore[return-value]

    def _group_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised same-size images (G, 3, h, w) on the device → averaged logits (G, Q, h, w), or the patch
        grid (G, Q, hp, wp) for SCLIP/ClearCLIP's direct resize; float32 on the device."""
        c = self.config
        g, _, h, w = x.shape
        step = self.crops_per_forward
        if c.slide_crop == 0 and c.direct_resize:
            return torch.cat([crop_logits(self.vision, x[b0:b0 + step].to(self.dtype), self._text, self.dense_params,
                                          grid_only=True) for b0 in range(0, g, step)])
        wins = windows(h, w, c.slide_crop, c.slide_stride) if c.slide_crop > 0 else [(0, h, 0, w)]
        count = self._window_count(h, w, wins)
        total = torch.zeros(g, self.vocabulary.num_queries, h, w, device=self.device)  # (G, Q, h, w)
        pairs = [(j, win) for win in wins for j in range(g)]  # every window has one shape within a group
        for b0 in range(0, len(pairs), step):
            chunk = pairs[b0:b0 + step]
            crops = torch.stack([x[j, :, y1:y2, x1:x2] for j, (y1, y2, x1, x2) in chunk])  # (b, 3, ch, cw)
            for (j, (y1, y2, x1, x2)), logit in zip(chunk, self._run_device(crops)):
                total[j, :, y1:y2, x1:x2] += logit
        if len(wins) == 1:
            return total  # one window covering the image: the count is 1 everywhere
        return total.div_(count)

    def _window_count(self, h: int, w: int, wins: Sequence[Window]) -> torch.Tensor:
        """Windows covering each pixel (h, w) float32 on the device; geometry only (computed on the host, never
        read from device data), uploaded once per image shape and kept."""
        key = (h, w, tuple(wins))
        cached = self._counts.get(key)
        if cached is None:
            count = np.zeros((h, w), dtype=np.float32)
            for y1, y2, x1, x2 in wins:
                count[y1:y2, x1:x2] += 1
            if (count == 0).any():
                raise RuntimeError("sliding windows left pixels uncovered")
            if len(self._counts) > 64:
                self._counts.clear()
            cached = self._counts[key] = torch.from_numpy(count).to(self.device)
        return cached

    def _run_device(self, crops: torch.Tensor) -> torch.Tensor:
        """Normalised crops (B, 3, h, w) on the device → logits (B, Q, h, w) float32 on the device."""
        h, w = crops.shape[-2:]
        ph, pw = self.vision.patch_size
        pad = self.config.pad_to_patch and (h % ph or w % pw)
        if pad:
            dh, dw = (-h) % ph, (-w) % pw  # ClearCLIP: zero-pad, extra pixel at bottom/right
            crops = F.pad(crops, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
        out = crop_logits(self.vision, crops.to(self.dtype), self._text, self.dense_params)
        return out[..., dh // 2: dh // 2 + h, dw // 2: dw // 2 + w] if pad else out

    def _post_device(self, logits: torch.Tensor, orig_hw: Tuple[int, int], image: torch.Tensor,
                     return_probs: bool, return_confidence: bool) -> DeviceResult:
        """``postprocess`` on the device: final PAMR (torch) when configured, then compact outputs."""
        c = self.config
        if c.pamr_steps > 0:
            guide = F.interpolate(image[None].float(), size=orig_hw, mode="bilinear", align_corners=False)
            full = F.interpolate(logits[None].float(), size=orig_hw, mode="bilinear", align_corners=False)
            logits = pamr(guide, full, c.pamr_steps, c.pamr_dilations, native=False)[0]
        return postprocess_on_device(logits, orig_hw, self.post_params, return_probs, return_confidence)

    def _whole_grid_logits(self, tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """SCLIP/ClearCLIP whole image: logits at the patch grid, resized straight to the original later."""
        return [crop_logits(self.vision, img[None].to(self.device, self.dtype), self._text, self.dense_params,
                            grid_only=True)[0].cpu() for img in tensors]

    def segment(self, images: Sequence[np.ndarray], return_probs: bool = False,
                names: Optional[Sequence[str]] = None, return_confidence: bool = False) -> List[SegmentationResult]:
        """RGB uint8 images (H, W, 3) at original size → one ``SegmentationResult`` each."""
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        resized = [resize_for_config(img, self.config, name) for img, name in zip(images, names)]
        return self.segment_prepared(resized, [img.shape[:2] for img in images], return_probs, names,
                                     return_confidence)
