// Photo Eraser Studio: upload a batch, paint one mask (or let the service find the watermark
// the batch shares), run it, compare before/after.
// Plain ES module, no framework, no build step; every request goes to this origin.
import { zipStore } from "./zip.js";

const CONFIG = JSON.parse(document.body.dataset.config);
const MAX_IMAGES = 20;
const MASK_MAX_SIDE = 2048; // the painted mask's resolution; the service stretches it anyway
const PREVIEW_MAX_SIDE = 2048;
const UNDO_DEPTH = 20;
const MASK_RGB = [255, 48, 96]; // the overlay colour; the mask itself is the alpha channel
const CREDENTIALS = "photo-eraser.credentials";
const TASK_STATUS = { 1: "waiting", 2: "in progress", 3: "complete", 4: "failed", 5: "closed", 6: "timed out" };
const IMAGE_STATUS = { 1: "waiting", 2: "processing", 3: "done", 4: "failed" };
const AUTO_MIN = CONFIG.autoMinImages; // the service refuses "mask": "auto" on fewer images
const AUTO_RELIABLE = 8; // from this many images every benchmark mark was found (docs/detect.md)
// The fixed start of the reason every image carries when detection finds nothing (docs/detect.md).
const NO_MARK = "no shared watermark found";

const $ = (sel) => document.querySelector(sel);

const state = {
  auth: null, // "Basic ..." while signed in
  images: [], // see addImage
  current: -1,
  nextId: 1,
  tool: "brush",
  size: 40,
  opacity: 0.55,
  showOriginal: false,
  view: { zoom: 1, panX: 0, panY: 0 },
  undo: [],
  redo: [],
  marked: 0,
  bbox: null, // mask bounding box in mask pixels: [x0, y0, x1, y1) or null
  fit: "stretch", // how the mask lands on images of other sizes: the mask_fit extension
  anchor: "bottom-right", // with fit "anchor": the mask_anchor extension
  mode: "paint", // "paint": the painted mask is sent; "auto": "mask": "auto", the service finds it
  detected: null, // after an automatic run: {canvas, bbox, url, marked} of the mask found
  task: null, // {id, items: [image], timer}
  compare: null,
};

// ---------------------------------------------------------------- the server's API

function utf8Base64(text) {
  let binary = "";
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary);
}

/** One call of the API: the parsed envelope, or an envelope made from a network error. */
async function api(method, path, body, headers = {}) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: { Authorization: state.auth, ...headers },
      body,
      cache: "no-store",
    });
  } catch (err) {
    return { code: -1, msg: `the server did not answer (${err.message})`, data: {} };
  }
  try {
    return await response.json();
  } catch {
    return { code: response.status * 100, msg: `HTTP ${response.status}`, data: {} };
  }
}

/**
 * The one place that turns a local file into a URL the batch API can fetch:
 * `POST /v3/pic/rw/upload` with the raw file, answering {url, expires_at}.
 */
export async function uploadImage(file, contentType) {
  const env = await api("POST", "/v3/pic/rw/upload", file, { "Content-Type": contentType });
  if (env.code !== 0) throw new Error(env.msg || `upload refused (code ${env.code})`);
  return { url: env.data.url, expiresAt: Number(env.data.expires_at) || 0 };
}

// ---------------------------------------------------------------- sign in

async function signIn(appkey, appsecret, { quiet = false } = {}) {
  const msg = $("#signin-msg");
  msg.className = "msg";
  msg.textContent = quiet ? "" : "Checking the key…";
  state.auth = "Basic " + utf8Base64(`${appkey}:${appsecret}`);
  const env = await api("POST", "/studio/session");
  if (env.code !== 0 || !env.data.valid) {
    state.auth = null;
    sessionStorage.removeItem(CREDENTIALS);
    msg.className = "msg error";
    msg.textContent =
      env.code === 0
        ? `This appkey/appsecret was not accepted (${env.data.msg}). Check both, or create a key with "photo-eraser keys create --name NAME".`
        : `Could not check the key: ${env.msg}`;
    return;
  }
  sessionStorage.setItem(CREDENTIALS, JSON.stringify({ appkey, appsecret }));
  msg.textContent = "";
  $("#whoami").textContent = `Signed in as ${appkey}`;
  $("#session").hidden = false;
  $("#signin-panel").hidden = true;
  $("#workspace").hidden = false;
  resizeView();
}

function signOut() {
  sessionStorage.removeItem(CREDENTIALS);
  state.auth = null;
  $("#session").hidden = true;
  $("#signin-panel").hidden = false;
  $("#workspace").hidden = true;
  $("#appsecret").value = "";
}

// ---------------------------------------------------------------- adding images

function sniffFormat(b) {
  const at = (i, s) => [...s].every((ch, k) => b[i + k] === ch.charCodeAt(0));
  if (b[0] === 0x89 && at(1, "PNG")) return "PNG";
  if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return "JPEG";
  if (at(0, "BM")) return "BMP";
  if (at(0, "GIF8")) return "!GIF";
  if (at(0, "RIFF") && at(8, "WEBP")) return "!WebP";
  if (at(0, "II*\0") || at(0, "MM\0*")) return "!TIFF";
  if (at(4, "ftyp")) return "!HEIC/AVIF";
  return "!";
}

const TYPES = { PNG: "image/png", JPEG: "image/jpeg", BMP: "image/bmp" };

function sizeText(bytes) {
  return bytes >= 1 << 20 ? `${(bytes / (1 << 20)).toFixed(1)} MB` : `${Math.ceil(bytes / 1024)} KB`;
}

/** The reason a size breaks the service's limits (its own wording), or "". */
function resolutionProblem(w, h) {
  const [short, long] = w < h ? [w, h] : [h, w];
  if (long > CONFIG.maxSide) return `resolution ${w}x${h} is above ${CONFIG.maxSide}x${CONFIG.maxSide}`;
  if (short < CONFIG.minSide) return `resolution ${w}x${h} is below ${CONFIG.minSide}x${CONFIG.minSide}`;
  if (long > CONFIG.maxAspect * short)
    return `aspect ratio ${(long / short).toFixed(2)}:1 is above ${CONFIG.maxAspect}:1`;
  return "";
}

/** Check a file as the service will; {format, bitmap} or throw an Error saying why not. */
async function checkFile(file) {
  if (file.size > CONFIG.maxImageBytes)
    throw new Error(`${sizeText(file.size)} is larger than ${sizeText(CONFIG.maxImageBytes)}`);
  const head = new Uint8Array(await file.slice(0, 16).arrayBuffer());
  const format = sniffFormat(head);
  if (format.startsWith("!"))
    throw new Error(`unsupported format: ${format.slice(1) || "not a PNG, JPEG or BMP image"}`);
  let bitmap;
  try {
    bitmap = await createImageBitmap(file); // EXIF orientation applied, as the service does
  } catch {
    throw new Error("image is truncated or corrupt");
  }
  const { width, height } = bitmap;
  const problem = resolutionProblem(width, height);
  if (problem) {
    bitmap.close();
    throw new Error(problem);
  }
  // Kept for display at most PREVIEW_MAX_SIDE a side: 20 photos of 5000 px would take 2 GB.
  const scale = PREVIEW_MAX_SIDE / Math.max(width, height);
  if (scale < 1) {
    const full = bitmap;
    bitmap = await createImageBitmap(full, {
      resizeWidth: Math.max(1, Math.round(width * scale)),
      resizeHeight: Math.max(1, Math.round(height * scale)),
      resizeQuality: "high",
    });
    full.close();
  }
  return { format, bitmap, width, height };
}

function refuse(name, reason) {
  const li = document.createElement("li");
  li.textContent = `${name}: ${reason}`;
  $("#refused").append(li);
}

async function addFiles(files) {
  $("#refused").replaceChildren();
  for (const file of files) {
    if (state.images.length >= MAX_IMAGES) {
      refuse(file.name, `the batch is full (${MAX_IMAGES} images at most)`);
      continue;
    }
    try {
      const checked = await checkFile(file);
      addImage({ name: file.name, file, ...checked, preview: URL.createObjectURL(file) });
    } catch (err) {
      refuse(file.name, err.message);
    }
  }
}

async function addUrls(text) {
  $("#refused").replaceChildren();
  for (const raw of text.split(/\s+/).filter(Boolean)) {
    if (state.images.length >= MAX_IMAGES) {
      refuse(raw, `the batch is full (${MAX_IMAGES} images at most)`);
      continue;
    }
    let url;
    try {
      url = new URL(raw);
    } catch {
      refuse(raw, "not a URL");
      continue;
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      refuse(raw, "only http and https URLs can be fetched by the service");
      continue;
    }
    const name = decodeURIComponent(url.pathname.split("/").pop() || url.host);
    if (url.origin !== location.origin) {
      // The page makes no request outside this server: the service checks this one itself.
      addImage({ name, remote: url.href, width: 0, height: 0 });
      continue;
    }
    try {
      const blob = await (await fetch(url.href)).blob();
      addImage({ name, remote: url.href, ...(await checkFile(blob)), preview: url.href });
    } catch (err) {
      refuse(raw, err.message);
    }
  }
}

function addImage(fields) {
  const image = { id: state.nextId++, upload: null, result: null, ...fields };
  state.images.push(image);
  // The mask takes the size of the first image (capped); later ones get it stretched.
  const first = !state.images.some((im) => im !== image && im.width);
  if (first && image.width && state.marked === 0 && state.undo.length === 0) sizeMaskTo(image.width, image.height);
  renderList();
  if (state.current < 0) select(state.images.length - 1);
}

function removeImage(id) {
  const index = state.images.findIndex((im) => im.id === id);
  if (index < 0) return;
  const [image] = state.images.splice(index, 1);
  if (image.file && image.preview) URL.revokeObjectURL(image.preview);
  if (state.current >= state.images.length) state.current = state.images.length - 1;
  renderList();
  select(state.current);
}

function renderList() {
  const list = $("#image-list");
  list.replaceChildren();
  state.images.forEach((image, index) => {
    const li = document.createElement("li");
    li.dataset.id = image.id;
    li.classList.toggle("current", index === state.current);
    const pick = document.createElement("button");
    pick.type = "button";
    pick.className = "pick";
    pick.setAttribute("aria-label", `Edit the mask on ${image.name}`);
    const thumb = document.createElement("canvas");
    thumb.width = 160;
    thumb.height = 96;
    image.thumb = thumb;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = image.name;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = image.width ? `${image.width}×${image.height}` : "remote, checked by the service";
    const status = image.result ?? (image.uploadError ? { status: "4" } : null);
    if (status) {
      const badge = document.createElement("span");
      badge.className = `badge s${status.status}`;
      badge.textContent = IMAGE_STATUS[status.status] ?? status.status;
      meta.append(" ", badge);
    }
    pick.append(thumb, name, meta);
    pick.addEventListener("click", () => select(index));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Remove ${image.name}`);
    remove.addEventListener("click", () => removeImage(image.id));
    li.append(pick, remove);
    list.append(li);
    drawThumb(image);
  });
  $("#image-count").textContent = state.images.length ? `(${state.images.length} of ${MAX_IMAGES})` : "";
  describeMask(); // automatic mode counts the images
}

const ANCHOR_AXES = {
  "top-left": [0, 0], top: [1, 0], "top-right": [2, 0],
  left: [0, 1], center: [1, 1], right: [2, 1],
  "bottom-left": [0, 2], bottom: [1, 2], "bottom-right": [2, 2],
};

/** The mask shown on the images: the painted one, or in automatic mode the one the service
 * found (once a run found it; stretched onto each image, as the service does): {canvas, fit,
 * bbox} or null. */
function shownMask() {
  if (state.mode === "paint") return { canvas: mask, fit: state.fit, bbox: state.bbox };
  const found = state.detected;
  return found ? { canvas: found.canvas, fit: "stretch", bbox: found.bbox } : null;
}

/** Where the mask `shown` lands on `image`, as the service places it (`place_mask`, nearest
 * neighbour): [x, y, w, h] in image pixels; it may reach past the image's edges (cut off). */
function maskRect(image, shown = shownMask() ?? { canvas: mask, fit: state.fit }) {
  const [W, H] = imageSize(image);
  const [mw, mh] = [shown.canvas.width, shown.canvas.height];
  const fit = shown.fit;
  if (fit === "stretch") return [0, 0, W, H];
  let sw, sh, hAxis, vAxis;
  if (fit === "contain") {
    const s = Math.min(W / mw, H / mh);
    [sw, sh] = [Math.min(W, Math.max(1, Math.round(mw * s))), Math.min(H, Math.max(1, Math.round(mh * s)))];
    [hAxis, vAxis] = [1, 1];
  } else {
    const s = Math.min(W, H) / Math.min(mw, mh);
    [sw, sh] = [Math.max(1, Math.round(mw * s)), Math.max(1, Math.round(mh * s))];
    [hAxis, vAxis] = ANCHOR_AXES[state.anchor];
  }
  const x = [0, Math.floor((W - sw) / 2), W - sw][hAxis];
  const y = [0, Math.floor((H - sh) / 2), H - sh][vAxis];
  return [x, y, sw, sh];
}

/** The mask drawn over an image shown at [x, y] with `scale`, placed as the service places
 * it; what falls outside the image is clipped. */
function drawPlacedMask(ctx, image, x, y, scale) {
  const shown = shownMask();
  if (!shown) return;
  const [w, h] = imageSize(image);
  const [mx, my, mw, mh] = maskRect(image, shown);
  ctx.save();
  ctx.beginPath();
  ctx.rect(x, y, w * scale, h * scale);
  ctx.clip();
  ctx.imageSmoothingEnabled = false; // nearest neighbour, as the service scales the mask
  ctx.drawImage(shown.canvas, x + mx * scale, y + my * scale, mw * scale, mh * scale);
  ctx.restore();
}

/** A thumbnail with the mask on it exactly as the service places it. */
function drawThumb(image) {
  const c = image.thumb;
  if (!c) return;
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  const w = image.width || mask.width;
  const h = image.height || mask.height;
  const s = Math.min(c.width / w, c.height / h);
  const [x, y, dw, dh] = [(c.width - w * s) / 2, (c.height - h * s) / 2, w * s, h * s];
  if (image.bitmap) ctx.drawImage(image.bitmap, x, y, dw, dh);
  else {
    ctx.fillStyle = "#333";
    ctx.fillRect(x, y, dw, dh);
  }
  ctx.globalAlpha = 0.8;
  drawPlacedMask(ctx, image, x, y, s);
  ctx.globalAlpha = 1;
}

function drawThumbs() {
  for (const image of state.images) drawThumb(image);
}

function select(index) {
  state.current = index;
  for (const li of $("#image-list").children) li.classList.toggle("current", Number(li.dataset.id) === state.images[index]?.id);
  const image = state.images[index];
  $("#editor-image").textContent = image ? `on ${image.name}` : "";
  fitView();
}

// ---------------------------------------------------------------- the mask

const mask = document.createElement("canvas"); // alpha 255 = restore, 0 = keep
mask.width = mask.height = 1024;
const maskCtx = mask.getContext("2d", { willReadFrequently: true });

function sizeMaskTo(w, h) {
  const s = Math.min(1, MASK_MAX_SIDE / Math.max(w, h));
  mask.width = Math.max(1, Math.round(w * s));
  mask.height = Math.max(1, Math.round(h * s));
}

/** Snap the mask to fully marked/unmarked pixels (what is sent is what is shown), and count. */
function settleMask() {
  const data = maskCtx.getImageData(0, 0, mask.width, mask.height);
  const px = data.data;
  let marked = 0;
  let [x0, y0, x1, y1] = [mask.width, mask.height, -1, -1];
  for (let i = 0, p = 0; i < px.length; i += 4, p++) {
    const on = px[i + 3] >= 128;
    px[i] = MASK_RGB[0];
    px[i + 1] = MASK_RGB[1];
    px[i + 2] = MASK_RGB[2];
    px[i + 3] = on ? 255 : 0;
    if (on) {
      marked++;
      const x = p % mask.width;
      const y = (p - x) / mask.width;
      if (x < x0) x0 = x;
      if (x > x1) x1 = x;
      if (y < y0) y0 = y;
      if (y > y1) y1 = y;
    }
  }
  maskCtx.putImageData(data, 0, 0);
  state.marked = marked;
  state.bbox = marked ? [x0, y0, x1 + 1, y1 + 1] : null;
  maskChanged();
}

function maskChanged() {
  describeMask();
  $("#undo").disabled = state.undo.length === 0;
  $("#redo").disabled = state.redo.length === 0;
  drawThumbs();
  render();
}

/** The line under the editor: what will be sent, and what is missing. */
function describeMask() {
  const info = $("#mask-info");
  info.dataset.marked = String(state.marked);
  info.classList.remove("warn");
  if (state.mode === "auto") {
    const n = state.images.length;
    const more = AUTO_MIN - n;
    info.classList.toggle("warn", more > 0);
    info.textContent =
      more > 0
        ? `Automatic: the service looks for the watermark that every image carries at the same place. Add ${more} more image${more === 1 ? "" : "s"} with the same mark (${n} of at least ${AUTO_MIN}; from ${AUTO_RELIABLE} it is found reliably).`
        : `Automatic: the service looks for the watermark that all ${n} images carry at the same place${n < AUTO_RELIABLE ? ` (with fewer than ${AUTO_RELIABLE} images a faint mark may not be found)` : ""}.${state.detected ? "" : " The mask it finds is shown here after the run."}`;
    return;
  }
  const share = (100 * state.marked) / (mask.width * mask.height);
  const how = {
    stretch: "stretched to every image",
    contain: "scaled to fit inside every image, centred",
    anchor: `scaled by each image's short side and kept at its ${state.anchor}`,
  }[state.fit];
  info.textContent = state.marked
    ? `The mask covers ${share < 0.1 ? share.toFixed(2) : share.toFixed(1)}% of its ${mask.width}×${mask.height} px (${how}, as the service does).`
    : `The mask is empty: paint over what to erase. It is ${how} of the batch, as the service does.`;
}

/** Paint the mask, or let the service find the watermark the batch shares. */
function setMode(mode) {
  state.mode = mode;
  for (const input of document.querySelectorAll('input[name="mask-mode"]')) input.checked = input.value === mode;
  const auto = mode === "auto";
  $("#mask-tools").hidden = auto;
  $("#stage").classList.toggle("auto", auto);
  // The mask found is stretched onto each image: the service takes no other placement with it.
  $("#mask-fit-label").hidden = auto;
  $("#mask-anchor-label").hidden = auto || state.fit !== "anchor";
  $("#detected").hidden = !(auto && state.detected);
  showAutoMessage(null);
  maskChanged();
}

function snapshot() {
  return maskCtx.getImageData(0, 0, mask.width, mask.height);
}

function restoreSnapshot(data) {
  if (mask.width !== data.width || mask.height !== data.height) {
    mask.width = data.width;
    mask.height = data.height;
  }
  maskCtx.putImageData(data, 0, 0);
}

function pushUndo() {
  state.undo.push(snapshot());
  if (state.undo.length > UNDO_DEPTH) state.undo.shift();
  state.redo = [];
}

function undo() {
  if (!state.undo.length) return;
  state.redo.push(snapshot());
  restoreSnapshot(state.undo.pop());
  settleMask();
}

function redo() {
  if (!state.redo.length) return;
  state.undo.push(snapshot());
  restoreSnapshot(state.redo.pop());
  settleMask();
}

function clearMask() {
  if (!state.marked) return;
  pushUndo();
  maskCtx.clearRect(0, 0, mask.width, mask.height);
  settleMask();
}

/** Draw on the mask in the coordinates of `image` (the mask placed on it as the service
 * places it; paint outside the mask's footprint falls off the mask). */
function withImageTransform(image, draw) {
  const [mx, my, mw, mh] = maskRect(image, { canvas: mask, fit: state.fit });
  const [sx, sy] = [mask.width / mw, mask.height / mh];
  maskCtx.save();
  maskCtx.setTransform(sx, 0, 0, sy, -mx * sx, -my * sy);
  draw(maskCtx);
  maskCtx.restore();
}

/** A mask file marks what the service would mark: alpha if it has transparency, else any
 * non-black pixel (above 127 for a JPEG, whose noise around black must not count). */
async function loadMask(file) {
  let out;
  try {
    out = await decodeMask(file);
  } catch {
    setStatus("That mask file cannot be decoded.", "error");
    return;
  }
  pushUndo();
  restoreSnapshot(out);
  settleMask();
}

/** A mask file as the editor's ImageData (alpha 255 = marked), or throw if it is no image. */
async function decodeMask(file) {
  const bitmap = await createImageBitmap(file, { premultiplyAlpha: "none" });
  const isJpeg = sniffFormat(new Uint8Array(await file.slice(0, 16).arrayBuffer())) === "JPEG";
  const c = document.createElement("canvas");
  c.width = bitmap.width;
  c.height = bitmap.height;
  const ctx = c.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const src = ctx.getImageData(0, 0, c.width, c.height).data;
  let hasAlpha = false;
  for (let i = 3; i < src.length; i += 4) if (src[i] < 255) { hasAlpha = true; break; }
  const threshold = isJpeg ? 127 : 0;
  const out = new ImageData(c.width, c.height);
  for (let i = 0; i < src.length; i += 4) {
    const on = hasAlpha ? src[i + 3] > 0 : Math.max(src[i], src[i + 1], src[i + 2]) > threshold;
    out.data[i] = MASK_RGB[0];
    out.data[i + 1] = MASK_RGB[1];
    out.data[i + 2] = MASK_RGB[2];
    out.data[i + 3] = on ? 255 : 0;
  }
  bitmap.close();
  return out;
}

/** The bounding box [x0, y0, x1, y1) of the marked pixels of `data`, or null. */
function markedBox(data) {
  let [x0, y0, x1, y1] = [data.width, data.height, -1, -1];
  for (let y = 0, i = 3; y < data.height; y++)
    for (let x = 0; x < data.width; x++, i += 4)
      if (data.data[i]) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
  return x1 < 0 ? null : [x0, y0, x1 + 1, y1 + 1];
}

/** The mask as the PNG the service receives: white = restore on opaque black. */
function maskPng() {
  const c = document.createElement("canvas");
  c.width = mask.width;
  c.height = mask.height;
  const ctx = c.getContext("2d");
  const src = snapshot().data;
  const out = ctx.createImageData(c.width, c.height);
  for (let i = 0; i < src.length; i += 4) {
    const v = src[i + 3] >= 128 ? 255 : 0;
    out.data[i] = out.data[i + 1] = out.data[i + 2] = v;
    out.data[i + 3] = 255;
  }
  ctx.putImageData(out, 0, 0);
  return new Promise((resolve) => c.toBlob(resolve, "image/png"));
}

async function blobBase64(blob) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function saveBlob(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// ---------------------------------------------------------------- the editor view

const view = $("#view");
const viewCtx = view.getContext("2d");
const pointer = { x: 0, y: 0, inside: false, drag: null, spaceDown: false };

function currentImage() {
  return state.images[state.current] ?? null;
}

function imageSize(image) {
  return image && image.width ? [image.width, image.height] : [mask.width, mask.height];
}

/** Where the current image lies on the canvas: [x, y, scale] in canvas pixels. */
function placement() {
  const [w, h] = imageSize(currentImage());
  const fit = Math.min(view.width / w, view.height / h) * 0.96;
  const scale = fit * state.view.zoom;
  return [(view.width - w * scale) / 2 + state.view.panX, (view.height - h * scale) / 2 + state.view.panY, scale];
}

function toImage(ev) {
  const rect = view.getBoundingClientRect();
  const dpr = view.width / rect.width;
  const [x, y, s] = placement();
  return [((ev.clientX - rect.left) * dpr - x) / s, ((ev.clientY - rect.top) * dpr - y) / s];
}

let renderQueued = false;
function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    draw();
  });
}

function draw() {
  $("#stage").dataset.zoom = state.view.zoom.toFixed(3);
  const ctx = viewCtx;
  ctx.clearRect(0, 0, view.width, view.height);
  const image = currentImage();
  if (!image) {
    ctx.fillStyle = "#9aa3b2";
    ctx.font = `${16 * devicePixelRatio}px system-ui`;
    ctx.textAlign = "center";
    ctx.fillText("Add images to paint the mask on them", view.width / 2, view.height / 2);
    return;
  }
  const [w, h] = imageSize(image);
  const [x, y, s] = placement();
  ctx.imageSmoothingEnabled = s < 2;
  if (image.bitmap) ctx.drawImage(image.bitmap, x, y, w * s, h * s);
  else {
    ctx.fillStyle = "#2b2f38";
    ctx.fillRect(x, y, w * s, h * s);
    ctx.fillStyle = "#9aa3b2";
    ctx.font = `${13 * devicePixelRatio}px system-ui`;
    ctx.textAlign = "center";
    ctx.fillText("remote image: not shown (this page only talks to its server)", x + (w * s) / 2, y + (h * s) / 2);
  }
  if (!state.showOriginal) {
    ctx.globalAlpha = state.opacity;
    drawPlacedMask(ctx, image, x, y, s);
    ctx.globalAlpha = 1;
    if (state.mode === "paint" && state.fit !== "stretch") {
      // The mask's footprint on this image: paint lands on the mask only inside it.
      const [mx, my, mw, mh] = maskRect(image);
      ctx.strokeStyle = "rgba(255, 255, 255, 0.6)";
      ctx.setLineDash([4, 4]);
      ctx.lineWidth = devicePixelRatio;
      ctx.strokeRect(x + mx * s, y + my * s, mw * s, mh * s);
      ctx.setLineDash([]);
    }
  }
  const drag = pointer.drag;
  if (drag && drag.kind === "rect") {
    ctx.strokeStyle = "#fff";
    ctx.setLineDash([6, 4]);
    ctx.lineWidth = 1.5 * devicePixelRatio;
    ctx.strokeRect(x + drag.x0 * s, y + drag.y0 * s, (drag.x1 - drag.x0) * s, (drag.y1 - drag.y0) * s);
    ctx.setLineDash([]);
  }
  const brush = state.tool === "brush" || state.tool === "eraser";
  if (state.mode === "paint" && pointer.inside && brush && !pointer.spaceDown) {
    const rect = view.getBoundingClientRect();
    const dpr = view.width / rect.width;
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = devicePixelRatio;
    ctx.beginPath();
    ctx.arc(pointer.x * dpr, pointer.y * dpr, (state.size / 2) * s, 0, 2 * Math.PI);
    ctx.stroke();
  }
}

function resizeView() {
  const rect = view.getBoundingClientRect();
  if (!rect.width) return;
  view.width = Math.round(rect.width * devicePixelRatio);
  view.height = Math.round(rect.height * devicePixelRatio);
  render();
}

function fitView() {
  state.view = { zoom: 1, panX: 0, panY: 0 };
  render();
}

function zoomBy(factor, cx = view.width / 2, cy = view.height / 2) {
  const [x, y, s] = placement();
  const zoom = Math.min(32, Math.max(0.2, state.view.zoom * factor));
  const ix = (cx - x) / s;
  const iy = (cy - y) / s;
  state.view.zoom = zoom;
  const [x2, y2, s2] = placement();
  state.view.panX += cx - (x2 + ix * s2);
  state.view.panY += cy - (y2 + iy * s2);
  render();
}

function panning(ev) {
  // Nothing is painted while the service is to find the mask: a drag only moves the view.
  return state.mode === "auto" || state.tool === "hand" || pointer.spaceDown || ev.button === 1;
}

function strokeTo(drag, px, py) {
  withImageTransform(currentImage(), (ctx) => {
    ctx.globalCompositeOperation = drag.erase ? "destination-out" : "source-over";
    ctx.strokeStyle = `rgb(${MASK_RGB})`;
    ctx.lineWidth = state.size;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(drag.lx, drag.ly);
    ctx.lineTo(px, py);
    ctx.stroke();
  });
  drag.lx = px;
  drag.ly = py;
}

view.addEventListener("pointerdown", (ev) => {
  if (!currentImage() || (ev.button !== 0 && ev.button !== 1)) return;
  view.setPointerCapture(ev.pointerId);
  $("#stage").focus({ preventScroll: true });
  const [px, py] = toImage(ev);
  if (panning(ev)) {
    pointer.drag = { kind: "pan", sx: ev.clientX, sy: ev.clientY, panX: state.view.panX, panY: state.view.panY };
  } else if (state.tool === "rect") {
    pointer.drag = { kind: "rect", x0: px, y0: py, x1: px, y1: py, sx: px, sy: py };
  } else {
    pushUndo();
    pointer.drag = { kind: "stroke", erase: state.tool === "eraser", lx: px, ly: py };
    strokeTo(pointer.drag, px, py);
  }
  render();
});

view.addEventListener("pointermove", (ev) => {
  const rect = view.getBoundingClientRect();
  pointer.x = ev.clientX - rect.left;
  pointer.y = ev.clientY - rect.top;
  pointer.inside = true;
  const drag = pointer.drag;
  if (drag) {
    const [px, py] = toImage(ev);
    if (drag.kind === "pan") {
      const dpr = view.width / rect.width;
      state.view.panX = drag.panX + (ev.clientX - drag.sx) * dpr;
      state.view.panY = drag.panY + (ev.clientY - drag.sy) * dpr;
    } else if (drag.kind === "rect") {
      drag.x0 = Math.min(drag.sx, px);
      drag.x1 = Math.max(drag.sx, px);
      drag.y0 = Math.min(drag.sy, py);
      drag.y1 = Math.max(drag.sy, py);
    } else {
      for (const e of ev.getCoalescedEvents?.() ?? [ev]) strokeTo(drag, ...toImage(e));
    }
  }
  render();
});

function endDrag() {
  const drag = pointer.drag;
  pointer.drag = null;
  if (!drag) return;
  if (drag.kind === "rect" && drag.x1 - drag.x0 >= 1 && drag.y1 - drag.y0 >= 1) {
    pushUndo();
    withImageTransform(currentImage(), (ctx) => {
      ctx.fillStyle = `rgb(${MASK_RGB})`;
      ctx.fillRect(drag.x0, drag.y0, drag.x1 - drag.x0, drag.y1 - drag.y0);
    });
  }
  if (drag.kind !== "pan") settleMask();
  render();
}

view.addEventListener("pointerup", endDrag);
view.addEventListener("pointercancel", endDrag);
view.addEventListener("pointerleave", () => {
  pointer.inside = false;
  render();
});
view.addEventListener(
  "wheel",
  (ev) => {
    ev.preventDefault();
    const rect = view.getBoundingClientRect();
    const dpr = view.width / rect.width;
    zoomBy(ev.deltaY < 0 ? 1.15 : 1 / 1.15, (ev.clientX - rect.left) * dpr, (ev.clientY - rect.top) * dpr);
  },
  { passive: false },
);
new ResizeObserver(resizeView).observe(view);

function setTool(tool) {
  state.tool = tool;
  for (const input of document.querySelectorAll('input[name="tool"]')) input.checked = input.value === tool;
  $("#stage").classList.toggle("panning", tool === "hand");
  render();
}

function setSize(size) {
  state.size = Math.max(2, Math.min(300, Math.round(size)));
  $("#brush-size").value = state.size;
  $("#brush-size-out").textContent = state.size;
  render();
}

function setOriginal(on) {
  state.showOriginal = on;
  $("#show-original").setAttribute("aria-pressed", String(on));
  render();
}

// ---------------------------------------------------------------- running a batch

function setStatus(text, kind = "") {
  const el = $("#run-status");
  el.className = `msg ${kind}`;
  el.textContent = text;
}

async function ensureUploaded(image) {
  if (image.remote) return image.remote;
  const soon = Date.now() / 1000 + 120;
  if (!image.upload || (image.upload.expiresAt && image.upload.expiresAt < soon)) {
    image.upload = await uploadImage(image.file, TYPES[image.format]);
  }
  return image.upload.url;
}

/** Say why automatic detection gave no mask (title, the reason as given, what to do), or
 * hide the box with `null`. */
function showAutoMessage(title, reason = "", help = "") {
  $("#auto-msg").hidden = !title;
  $("#auto-msg-title").textContent = title ?? "";
  $("#auto-msg-reason").textContent = reason;
  $("#auto-msg-help").textContent = help;
}

const AUTO_HELP =
  `Choose "Paint a mask" and paint over the watermark, or add more photos that carry the same mark at the same place (from ${AUTO_RELIABLE} images it is found reliably).`;

async function submit() {
  if (state.task?.timer) clearTimeout(state.task.timer);
  showAutoMessage(null);
  const auto = state.mode === "auto";
  if (!state.images.length) return setStatus("Add at least one image first.", "error");
  if (auto && state.images.length < AUTO_MIN) {
    setStatus("");
    return showAutoMessage(
      "Not enough images to find the watermark automatically",
      `Automatic detection needs at least ${AUTO_MIN} images that carry the same watermark; this batch has ${state.images.length}.`,
      AUTO_HELP,
    );
  }
  if (!auto && !state.marked) return setStatus("The mask is empty: paint over what to erase first.", "error");
  const priority = Number($("#priority").value);
  if (!Number.isInteger(priority) || priority < 0 || priority > 9)
    return setStatus("Priority must be a whole number from 0 to 9.", "error");
  $("#submit").disabled = true;
  try {
    const items = [];
    for (const [i, image] of state.images.entries()) {
      image.result = null;
      image.uploadError = null;
      setStatus(`Uploading ${i + 1} of ${state.images.length}: ${image.name}…`);
      try {
        items.push({ image, url: await ensureUploaded(image) });
      } catch (err) {
        image.uploadError = `upload failed: ${err.message}`;
      }
    }
    renderList();
    renderResults(state.images.filter((im) => im.uploadError));
    if (!items.length) return setStatus("No image could be uploaded; see the reasons below.", "error");
    const fields = { images: items.map((it) => it.url), mask: "auto", priority, engine: $("#engine").value };
    if (!auto) {
      fields.mask = "data:image/png;base64," + (await blobBase64(await maskPng()));
      if (state.fit !== "stretch") fields.mask_fit = state.fit;
      if (state.fit === "anchor") fields.mask_anchor = state.anchor;
    }
    const body = JSON.stringify(fields);
    if (body.length > CONFIG.maxBodyBytes)
      return setStatus(`The request is ${sizeText(body.length)}, more than the server takes (${sizeText(CONFIG.maxBodyBytes)}).`, "error");
    setStatus("Sending the batch…");
    const env = await api("POST", "/v3/pic/rw/batch", body, { "Content-Type": "application/json" });
    if (env.code !== 0) {
      if (!auto) return setStatus(`The batch was refused: ${env.msg}`, "error");
      setStatus("");
      return showAutoMessage("The service refused to look for the watermark", env.msg, AUTO_HELP);
    }
    if (auto) forgetDetected();
    state.task = { id: env.data.task_id, items: items.map((it) => it.image), timer: 0, auto };
    setStatus(`Task ${state.task.id}: sent.`);
    await poll(state.task);
  } finally {
    $("#submit").disabled = false;
  }
}

/** Ask for the task's result, then again after the `wait_time` the server asks for. */
async function poll(task) {
  if (state.task !== task) return;
  const env = await api("GET", `/v3/pic/rw/result/${encodeURIComponent(task.id)}`);
  if (state.task !== task) return;
  let wait = 5;
  if (env.code !== 0) {
    setStatus(`Could not read the task's state (${env.msg}); trying again in ${wait} s.`, "error");
  } else {
    const data = env.data;
    data.list.forEach((item, i) => {
      if (task.items[i]) task.items[i].result = item;
    });
    const done = data.list.filter((it) => it.status === "3" || it.status === "4").length;
    const finished = !["1", "2"].includes(data.status);
    wait = Math.max(1, Number(data.wait_time) || 1);
    setStatus(
      `Task ${task.id}: ${TASK_STATUS[data.status] ?? data.status}, ${done} of ${data.list.length} images finished` +
        (finished ? "." : `; next look in ${wait} s.`),
      finished ? (data.status === "3" ? "ok" : "error") : "",
    );
    $("#run-status").dataset.status = data.status;
    renderList();
    renderResults([...task.items, ...state.images.filter((im) => im.uploadError)]);
    if (finished) {
      task.timer = 0;
      if (task.auto) await detectionOutcome(task, data);
      const first = task.items.find((im) => im.result?.status === "3");
      if (first) showCompare(first);
      $("#download-all").disabled = !task.items.some((im) => im.result?.image_result);
      return;
    }
  }
  task.timer = setTimeout(() => poll(task), wait * 1000);
}

function resultName(image) {
  const ext = (new URL(image.result.image_result, location.href).pathname.match(/\.(\w+)$/) ?? [, "png"])[1];
  return `${image.name.replace(/\.[^.]*$/, "")}-erased.${ext}`;
}

function renderResults(images) {
  const body = $("#results tbody");
  body.replaceChildren();
  images.forEach((image, i) => {
    const r = image.result ?? { status: "4", reason: image.uploadError ?? "" };
    const tr = document.createElement("tr");
    tr.dataset.status = r.status;
    const cells = [
      String(i + 1),
      image.name,
      IMAGE_STATUS[r.status] ?? r.status,
      r.method ?? "",
      r.recovered_share == null ? "" : `${Math.round(100 * r.recovered_share)}%`,
      r.reason ?? "",
    ];
    for (const [k, text] of cells.entries()) {
      const td = document.createElement("td");
      td.textContent = text;
      if (k === 5) td.className = "reason";
      tr.append(td);
    }
    const td = document.createElement("td");
    if (r.status === "3" && r.image_result) {
      const compare = document.createElement("button");
      compare.type = "button";
      compare.textContent = "Compare";
      compare.addEventListener("click", () => showCompare(image));
      const a = document.createElement("a");
      a.className = "button download";
      a.href = r.image_result;
      a.download = resultName(image);
      a.textContent = "Download";
      td.append(compare, " ", a);
    }
    tr.append(td);
    body.append(tr);
  });
}

// ---------------------------------------------------------------- the mask the service found

/** After an automatic run: show the mask found on every image, or why none was found. */
async function detectionOutcome(task, data) {
  if (data.detected_mask) {
    $("#detected-download").href = data.detected_mask;
    try {
      await showDetected(data.detected_mask);
    } catch (err) {
      // The results and the mask's link stand; only the overlay is missing (e.g. an object
      // store that does not let this page read its links).
      showAutoMessage(
        "The watermark was found, but its mask cannot be drawn here",
        err.message,
        'The results are below; "Download the detected mask" (under the editor) still works.',
      );
      $("#detected-note").hidden = $("#detected-edit").hidden = true;
      $("#detected").hidden = state.mode !== "auto";
    }
    return;
  }
  const reasons = task.items.map((im) => im.result?.reason ?? "").filter(Boolean);
  const reason = reasons.find((r) => r.startsWith(NO_MARK));
  if (reason)
    showAutoMessage("No watermark was found, so nothing was erased", reason, AUTO_HELP);
}

async function showDetected(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  const data = await decodeMask(await response.blob());
  const canvas = document.createElement("canvas");
  canvas.width = data.width;
  canvas.height = data.height;
  canvas.getContext("2d").putImageData(data, 0, 0);
  const bbox = markedBox(data);
  state.detected = { canvas, bbox, url, marked: bbox ? countMarked(data) : 0 };
  $("#detected-note").hidden = $("#detected-edit").hidden = false;
  $("#detected").hidden = state.mode !== "auto";
  $("#detected").dataset.marked = String(state.detected.marked);
  maskChanged();
}

function countMarked(data) {
  let n = 0;
  for (let i = 3; i < data.data.length; i += 4) if (data.data[i]) n++;
  return n;
}

function forgetDetected() {
  state.detected = null;
  $("#detected").hidden = true;
  maskChanged();
}

/** Carry on by hand from the mask found: it becomes the painted mask (undo brings the old
 * one back), stretched as the service stretched it. */
function editDetected() {
  if (!state.detected) return;
  pushUndo();
  maskCtx.clearRect(0, 0, mask.width, mask.height);
  maskCtx.imageSmoothingEnabled = false;
  maskCtx.drawImage(state.detected.canvas, 0, 0, mask.width, mask.height);
  state.fit = "stretch";
  $("#mask-fit").value = "stretch";
  setMode("paint");
  settleMask();
}

// ---------------------------------------------------------------- before / after

function showCompare(image) {
  state.compare = image;
  $("#compare-panel").hidden = false;
  $("#compare-name").textContent = image.name;
  const before = $("#before");
  before.hidden = !image.preview;
  if (image.preview) before.src = image.preview;
  const after = $("#after");
  after.src = image.result.image_result;
  // The frame takes the image's shape, so that the divide lies where the slider says.
  const setAspect = (w, h) => $("#compare-panel").style.setProperty("--aspect", String(w / h));
  if (image.width) setAspect(image.width, image.height);
  else after.addEventListener("load", () => setAspect(after.naturalWidth, after.naturalHeight), { once: true });
  const link = $("#download-one");
  link.href = image.result.image_result;
  link.download = resultName(image);
  setComparePosition(Number($("#compare-slider").value));
  $("#compare-zoom").style.transform = "";
}

function setComparePosition(percent) {
  $("#compare").style.setProperty("--pos", `${percent}%`);
}

/** Zoom the comparison onto the mask's box, as the mask lands on this image. */
function zoomToMask() {
  const shown = shownMask();
  if (!shown?.bbox) return;
  // The box in mask pixels, placed on the compared image, as fractions of that image.
  const [x0, y0, x1, y1] = shown.bbox;
  const [iw, ih] = imageSize(state.compare);
  const [mx, my, mw, mh] = maskRect(state.compare, shown);
  const [cw, ch] = [shown.canvas.width, shown.canvas.height];
  const along = (v, m, offset, size, whole) => Math.min(1, Math.max(0, (offset + (v / m) * size) / whole));
  const [fx0, fx1] = [along(x0, cw, mx, mw, iw), along(x1, cw, mx, mw, iw)];
  const [fy0, fy1] = [along(y0, ch, my, mh, ih), along(y1, ch, my, mh, ih)];
  const frame = $("#compare-zoom");
  const W = frame.offsetWidth;
  const H = frame.offsetHeight;
  const z = Math.max(1, Math.min(16, 1 / (1.4 * Math.max(fx1 - fx0, fy1 - fy0))));
  let tx = W / 2 - ((fx0 + fx1) / 2) * W * z;
  let ty = H / 2 - ((fy0 + fy1) / 2) * H * z;
  tx = Math.min(0, Math.max(W - W * z, tx));
  ty = Math.min(0, Math.max(H - H * z, ty));
  frame.style.transform = `translate(${tx}px, ${ty}px) scale(${z})`;
}

async function downloadAll() {
  const items = state.task?.items.filter((im) => im.result?.status === "3" && im.result.image_result) ?? [];
  if (!items.length) return;
  $("#download-all").disabled = true;
  try {
    const files = [];
    for (const [i, image] of items.entries()) {
      setStatus(`Fetching result ${i + 1} of ${items.length}…`);
      const response = await fetch(image.result.image_result);
      if (!response.ok) throw new Error(`${image.name}: HTTP ${response.status}`);
      const name = `${String(i + 1).padStart(2, "0")}-${resultName(image)}`;
      files.push({ name, data: new Uint8Array(await response.arrayBuffer()) });
    }
    saveBlob(zipStore(files), "photo-eraser-results.zip");
    setStatus(`Saved ${files.length} results as photo-eraser-results.zip.`, "ok");
  } catch (err) {
    setStatus(`Could not fetch every result: ${err.message}`, "error");
  } finally {
    $("#download-all").disabled = false;
  }
}

// ---------------------------------------------------------------- wiring

function typing(ev) {
  return ev.target.closest?.("input:not([type=range]):not([type=radio]), textarea, select");
}

document.addEventListener("keydown", (ev) => {
  if ($("#workspace").hidden || typing(ev)) return;
  const mod = ev.ctrlKey || ev.metaKey;
  const key = ev.key.toLowerCase();
  // In automatic mode the painted mask is put away, not edited: only the view keys work.
  if (state.mode === "auto" && (mod || "ber[]".includes(key))) return;
  if (mod && key === "z") {
    ev.preventDefault();
    if (ev.shiftKey) redo();
    else undo();
    return;
  }
  if (mod && key === "y") {
    ev.preventDefault();
    redo();
    return;
  }
  if (mod || ev.altKey) return;
  const inStage = ev.target === $("#stage");
  const step = Math.max(2, Math.round(state.size * 0.15));
  const handled = {
    b: () => setTool("brush"),
    e: () => setTool("eraser"),
    r: () => setTool("rect"),
    h: () => setTool("hand"),
    "[": () => setSize(state.size - step),
    "]": () => setSize(state.size + step),
    "+": () => zoomBy(1.25),
    "=": () => zoomBy(1.25),
    "-": () => zoomBy(0.8),
    0: () => fitView(),
    o: () => setOriginal(true),
  }[key];
  if (handled) {
    ev.preventDefault();
    handled();
  } else if (inStage && key === " ") {
    ev.preventDefault();
    pointer.spaceDown = true;
    $("#stage").classList.add("panning");
  } else if (inStage && key.startsWith("arrow")) {
    ev.preventDefault();
    const d = 40 * devicePixelRatio;
    state.view.panX += { arrowleft: d, arrowright: -d }[key] ?? 0;
    state.view.panY += { arrowup: d, arrowdown: -d }[key] ?? 0;
    render();
  }
});

document.addEventListener("keyup", (ev) => {
  const key = ev.key.toLowerCase();
  if (key === "o") setOriginal(false);
  if (key === " ") {
    pointer.spaceDown = false;
    $("#stage").classList.toggle("panning", state.tool === "hand");
  }
});

function wire() {
  $("#signin").addEventListener("submit", (ev) => {
    ev.preventDefault();
    signIn($("#appkey").value.trim(), $("#appsecret").value.trim());
  });
  $("#signout").addEventListener("click", signOut);

  const drop = $("#dropzone");
  $("#file-input").addEventListener("change", (ev) => {
    addFiles([...ev.target.files]);
    ev.target.value = "";
  });
  drop.addEventListener("dragover", (ev) => {
    ev.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    addFiles([...ev.dataTransfer.files]);
  });
  $("#add-urls").addEventListener("click", () => {
    addUrls($("#url-input").value);
    $("#url-input").value = "";
  });

  for (const input of document.querySelectorAll('input[name="tool"]'))
    input.addEventListener("change", () => setTool(input.value));
  $("#brush-size").addEventListener("input", (ev) => setSize(Number(ev.target.value)));
  $("#opacity").addEventListener("input", (ev) => {
    state.opacity = Number(ev.target.value) / 100;
    render();
  });
  $("#undo").addEventListener("click", undo);
  $("#redo").addEventListener("click", redo);
  $("#clear").addEventListener("click", clearMask);
  $("#zoom-in").addEventListener("click", () => zoomBy(1.25));
  $("#zoom-out").addEventListener("click", () => zoomBy(0.8));
  $("#zoom-fit").addEventListener("click", fitView);
  const original = $("#show-original");
  original.addEventListener("pointerdown", () => setOriginal(true));
  for (const type of ["pointerup", "pointerleave", "blur"]) original.addEventListener(type, () => setOriginal(false));
  original.addEventListener("keydown", (ev) => {
    if (ev.key === " " || ev.key === "Enter") {
      ev.preventDefault();
      setOriginal(true);
    }
  });
  original.addEventListener("keyup", () => setOriginal(false));
  $("#load-mask").addEventListener("change", (ev) => {
    if (ev.target.files[0]) loadMask(ev.target.files[0]);
    ev.target.value = "";
  });
  $("#save-mask").addEventListener("click", async () => saveBlob(await maskPng(), "mask.png"));

  for (const input of document.querySelectorAll('input[name="mask-mode"]'))
    input.addEventListener("change", () => setMode(input.value));
  $("#detected-edit").addEventListener("click", editDetected);
  $("#run-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    submit();
  });
  const placementChanged = () => {
    state.fit = $("#mask-fit").value;
    state.anchor = $("#mask-anchor").value;
    $("#mask-anchor-label").hidden = state.fit !== "anchor";
    maskChanged();
  };
  $("#mask-fit").addEventListener("change", placementChanged);
  $("#mask-anchor").addEventListener("change", placementChanged);
  $("#compare-slider").addEventListener("input", (ev) => setComparePosition(Number(ev.target.value)));
  $("#zoom-mask").addEventListener("click", zoomToMask);
  $("#zoom-reset").addEventListener("click", () => ($("#compare-zoom").style.transform = ""));
  $("#download-all").addEventListener("click", downloadAll);
}

async function loadEngines() {
  const select = $("#engine");
  let available = {};
  try {
    available = (await (await fetch("/healthz", { cache: "no-store" })).json()).data?.engines ?? {};
  } catch {
    // the list below still offers every engine; the server says which one it lacks
  }
  for (const name of CONFIG.engines) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = available[name] === false ? `${name} (not installed)` : name;
    option.disabled = available[name] === false;
    select.append(option);
  }
}

wire();
for (const el of document.querySelectorAll(".auto-min")) el.textContent = String(AUTO_MIN);
setSize(state.size);
maskChanged();
loadEngines();
const saved = JSON.parse(sessionStorage.getItem(CREDENTIALS) ?? "null");
if (saved) signIn(saved.appkey, saved.appsecret, { quiet: true });
