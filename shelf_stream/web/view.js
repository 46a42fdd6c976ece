// Drawing: where the streamed picture sits on screen, and boxes with labels on it.
// Boxes arrive in streamed-frame pixels; the picture is shown with `object-fit: contain`
// (letterboxed, centred) and, for the front camera, mirrored like a mirror, so every box
// goes through one mapping (fitRect + toScreen) whichever view draws it.

/** The centred rectangle (CSS px) a `width` x `height` picture fills in a `box` element. */
export function fitRect(boxWidth, boxHeight, width, height) {
  const scale = Math.min(boxWidth / width, boxHeight / height);
  const w = width * scale;
  const h = height * scale;
  return { x: (boxWidth - w) / 2, y: (boxHeight - h) / 2, w, h, scale };
}

/** A box in streamed pixels → CSS px on screen, for a `frameWidth`-wide stream. */
export function toScreen(box, fit, frameWidth, frameHeight, mirrored) {
  const sx = fit.w / frameWidth;
  const sy = fit.h / frameHeight;
  const x1 = mirrored ? frameWidth - box.x2 : box.x1;
  const x2 = mirrored ? frameWidth - box.x1 : box.x2;
  return {
    x1: fit.x + x1 * sx,
    y1: fit.y + box.y1 * sy,
    x2: fit.x + x2 * sx,
    y2: fit.y + box.y2 * sy,
  };
}

/** Size a canvas's backing store to its CSS box at the device's pixel ratio; its context. */
export function prepareCanvas(canvas) {
  const rect = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const width = Math.round(rect.width * dpr);
  const height = Math.round(rect.height * dpr);
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return { ctx, width: rect.width, height: rect.height };
}

const LABEL_HEIGHT = 18;

/**
 * Stroke each box (already on screen, CSS px) with its label, the label kept inside the
 * picture `fit`: above the box where there is room, else just inside its top edge, and
 * pushed left from the picture's right edge.
 */
export function drawBoxes(ctx, boxes, fit) {
  ctx.lineWidth = 2;
  ctx.font = "600 13px system-ui, sans-serif";
  ctx.textBaseline = "top";
  const right = fit.x + fit.w;
  const bottom = fit.y + fit.h;
  for (const box of boxes) {
    const x1 = Math.max(fit.x, box.x1);
    const y1 = Math.max(fit.y, box.y1);
    const x2 = Math.min(right, box.x2);
    const y2 = Math.min(bottom, box.y2);
    if (x2 <= x1 || y2 <= y1) continue; // moved out of the picture
    ctx.globalAlpha = box.alpha ?? 1;
    const colour = `hsl(${(box.classId * 47) % 360} 85% 55%)`;
    ctx.strokeStyle = colour;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = `${box.label} ${Math.round(box.score * 100)}%`;
    const textWidth = Math.min(ctx.measureText(text).width + 8, fit.w);
    const labelX = Math.min(Math.max(fit.x, x1 - 1), right - textWidth);
    const labelY =
      y1 - LABEL_HEIGHT >= fit.y ? y1 - LABEL_HEIGHT : Math.min(y1, bottom - LABEL_HEIGHT);
    ctx.fillStyle = colour;
    ctx.fillRect(labelX, labelY, textWidth, LABEL_HEIGHT);
    ctx.fillStyle = "#000";
    ctx.fillText(text, labelX + 4, labelY + 2, textWidth - 8);
  }
  ctx.globalAlpha = 1;
}

/** Draw `bitmap` (a streamed frame) into `fit`, mirrored for the front camera. */
export function drawPicture(ctx, bitmap, fit, mirrored) {
  ctx.save();
  if (mirrored) {
    ctx.translate(fit.x * 2 + fit.w, 0);
    ctx.scale(-1, 1);
  }
  ctx.drawImage(bitmap, fit.x, fit.y, fit.w, fit.h);
  ctx.restore();
}
