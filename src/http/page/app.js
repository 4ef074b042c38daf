// gradcam-serve's page: pick, drop or paste a picture; see the model's classes and the
// Grad-CAM heat map over the picture; ask about another class. No framework, no build
// step, nothing from another site, and only relative URLs, so that it works offline and
// behind a gateway under a path prefix.
//
// The heat map is blended here, from the answer's raw `saliency` map (the request says
// overlay=false), with the server's own arithmetic (src/render.rs: min-max scaling,
// OpenCV INTER_LINEAR upsampling, scaling again, OpenCV's JET, the weighted blend rescaled
// by its maximum) in float32 steps, so that the canvas equals the overlay PNG the server
// would draw at the same opacity: the opacity slider redraws at once, with no request.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const F = Math.fround;
  const EPS = F(1e-7);
  const TOKEN_KEY = 'gradcam-serve.token';

  // OpenCV's COLORMAP_JET as RGB, 256 entries (the same table as src/colormap.rs).
  const JET = new Uint8Array([
    0,0,128, 0,0,132, 0,0,136, 0,0,140, 0,0,144, 0,0,148, 0,0,152, 0,0,156,
    0,0,160, 0,0,164, 0,0,168, 0,0,172, 0,0,176, 0,0,180, 0,0,184, 0,0,188,
    0,0,192, 0,0,196, 0,0,200, 0,0,204, 0,0,208, 0,0,212, 0,0,216, 0,0,220,
    0,0,224, 0,0,228, 0,0,232, 0,0,236, 0,0,240, 0,0,244, 0,0,248, 0,0,252,
    0,0,255, 0,4,255, 0,8,255, 0,12,255, 0,16,255, 0,20,255, 0,24,255, 0,28,255,
    0,32,255, 0,36,255, 0,40,255, 0,44,255, 0,48,255, 0,52,255, 0,56,255, 0,60,255,
    0,64,255, 0,68,255, 0,72,255, 0,76,255, 0,80,255, 0,84,255, 0,88,255, 0,92,255,
    0,96,255, 0,100,255, 0,104,255, 0,108,255, 0,112,255, 0,116,255, 0,120,255, 0,124,255,
    0,128,255, 0,132,255, 0,136,255, 0,140,255, 0,144,255, 0,148,255, 0,152,255, 0,156,255,
    0,160,255, 0,164,255, 0,168,255, 0,172,255, 0,176,255, 0,180,255, 0,184,255, 0,188,255,
    0,192,255, 0,196,255, 0,200,255, 0,204,255, 0,208,255, 0,212,255, 0,216,255, 0,220,255,
    0,224,255, 0,228,255, 0,232,255, 0,236,255, 0,240,255, 0,244,255, 0,248,255, 0,252,255,
    2,255,254, 6,255,250, 10,255,246, 14,255,242, 18,255,238, 22,255,234, 26,255,230, 30,255,226,
    34,255,222, 38,255,218, 42,255,214, 46,255,210, 50,255,206, 54,255,202, 58,255,198, 62,255,194,
    66,255,190, 70,255,186, 74,255,182, 78,255,178, 82,255,174, 86,255,170, 90,255,166, 94,255,162,
    98,255,158, 102,255,154, 106,255,150, 110,255,146, 114,255,142, 118,255,138, 122,255,134, 126,255,130,
    130,255,126, 134,255,122, 138,255,118, 142,255,114, 146,255,110, 150,255,106, 154,255,102, 158,255,98,
    162,255,94, 166,255,90, 170,255,86, 174,255,82, 178,255,78, 182,255,74, 186,255,70, 190,255,66,
    194,255,62, 198,255,58, 202,255,54, 206,255,50, 210,255,46, 214,255,42, 218,255,38, 222,255,34,
    226,255,30, 230,255,26, 234,255,22, 238,255,18, 242,255,14, 246,255,10, 250,255,6, 254,255,1,
    255,252,0, 255,248,0, 255,244,0, 255,240,0, 255,236,0, 255,232,0, 255,228,0, 255,224,0,
    255,220,0, 255,216,0, 255,212,0, 255,208,0, 255,204,0, 255,200,0, 255,196,0, 255,192,0,
    255,188,0, 255,184,0, 255,180,0, 255,176,0, 255,172,0, 255,168,0, 255,164,0, 255,160,0,
    255,156,0, 255,152,0, 255,148,0, 255,144,0, 255,140,0, 255,136,0, 255,132,0, 255,128,0,
    255,124,0, 255,120,0, 255,116,0, 255,112,0, 255,108,0, 255,104,0, 255,100,0, 255,96,0,
    255,92,0, 255,88,0, 255,84,0, 255,80,0, 255,76,0, 255,72,0, 255,68,0, 255,64,0,
    255,60,0, 255,56,0, 255,52,0, 255,48,0, 255,44,0, 255,40,0, 255,36,0, 255,32,0,
    255,28,0, 255,24,0, 255,20,0, 255,16,0, 255,12,0, 255,8,0, 255,4,0, 255,0,0,
    252,0,0, 248,0,0, 244,0,0, 240,0,0, 236,0,0, 232,0,0, 228,0,0, 224,0,0,
    220,0,0, 216,0,0, 212,0,0, 208,0,0, 204,0,0, 200,0,0, 196,0,0, 192,0,0,
    188,0,0, 184,0,0, 180,0,0, 176,0,0, 172,0,0, 168,0,0, 164,0,0, 160,0,0,
    156,0,0, 152,0,0, 148,0,0, 144,0,0, 140,0,0, 136,0,0, 132,0,0, 128,0,0,
  ]);

  const settings = readSettings();
  const state = {
    model: null,
    file: null, // the chosen File or Blob
    fileName: '',
    bitmap: null, // the picture as the browser decoded it, or the server's copy
    browserDecoded: false,
    answer: null,
    answerText: '',
    roundTripMs: 0,
    drawMs: 0,
    blend: null, // what the opacity needs: picture pixels, heat levels, region
    output: null, // ImageData drawn on the canvas
    controller: null,
    requests: 0, // POST explain requests sent by this page (the browser test reads it)
    frame: 0,
  };
  window.gradcamPage = state;

  function readSettings() {
    const meta = document.querySelector('meta[name="gradcam-settings"]');
    const defaults = { auth: false, resize: 'stretch', alpha: 0.5, top_k: 5 };
    try {
      return Object.assign(defaults, JSON.parse(meta ? meta.content : '{}'));
    } catch (e) {
      return defaults;
    }
  }

  // ---------------------------------------------------------------- start-up
  function init() {
    $('alpha').value = String(settings.alpha);
    $('top-k').value = String(settings.top_k);
    $('resize').value = settings.resize;
    showAlpha();
    drawLegend();
    const token = sessionStorage.getItem(TOKEN_KEY) || '';
    $('token').value = token;
    if (settings.auth || token) $('token-field').hidden = false;

    $('file').addEventListener('change', () => {
      const f = $('file').files[0];
      if (f) choose(f, f.name);
    });
    $('token').addEventListener('input', () => {
      const v = $('token').value.trim();
      if (v) sessionStorage.setItem(TOKEN_KEY, v);
      else sessionStorage.removeItem(TOKEN_KEY);
    });
    $('token').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && state.file) explain(currentTarget());
    });
    $('run').addEventListener('click', () => explain(currentTarget()));
    $('retry').addEventListener('click', () => explain(currentTarget()));
    for (const id of ['layer', 'resize', 'method', 'score-map']) {
      $(id).addEventListener('change', () => state.file && explain(currentTarget()));
    }
    $('top-k').addEventListener('change', () => state.file && explain(currentTarget()));
    $('alpha').addEventListener('input', () => {
      showAlpha();
      if (!state.blend || state.frame) return;
      state.frame = requestAnimationFrame(() => {
        state.frame = 0;
        draw();
      });
    });
    $('download-png').addEventListener('click', downloadPng);
    $('download-json').addEventListener('click', downloadJson);

    // Drop anywhere on the page; paste anywhere.
    document.addEventListener('dragover', (e) => {
      if (!hasFiles(e.dataTransfer)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = 'copy';
      document.body.classList.add('dragging');
    });
    document.addEventListener('dragleave', (e) => {
      if (e.relatedTarget === null) document.body.classList.remove('dragging');
    });
    document.addEventListener('drop', (e) => {
      document.body.classList.remove('dragging');
      if (!hasFiles(e.dataTransfer)) return;
      e.preventDefault();
      const f = e.dataTransfer.files[0];
      if (f) choose(f, f.name);
    });
    document.addEventListener('paste', (e) => {
      const items = e.clipboardData ? Array.from(e.clipboardData.items) : [];
      const item = items.find((i) => i.kind === 'file');
      if (!item) return; // text pasted into the token field stays text
      e.preventDefault();
      const f = item.getAsFile();
      if (f) choose(f, f.name && f.name !== 'image.png' ? f.name : 'pasted image');
    });

    loadModel();
  }

  function hasFiles(dt) {
    return dt && Array.from(dt.types || []).includes('Files');
  }

  async function loadModel() {
    try {
      const res = await fetch('model', { headers: { Accept: 'application/json' } });
      if (!res.ok) throw await problemOf(res);
      const model = await res.json();
      state.model = model;
      const layer = $('layer');
      layer.replaceChildren(
        ...model.layers.map((name) => {
          const o = new Option(name, name);
          o.selected = name === model.default_layer;
          return o;
        })
      );
      // Every method the server runs on this model (its default first), named as
      // pytorch-grad-cam names it, with what it costs.
      if (Array.isArray(model.methods) && model.methods.length) {
        $('method').replaceChildren(
          ...model.methods.map((m) => {
            const o = new Option(`${m.reference} (${m.name})`, m.name);
            o.title = m.cost;
            return o;
          })
        );
      }
      $('top-k').max = String(model.num_classes);
      if (Number($('top-k').value) > model.num_classes) {
        $('top-k').value = String(model.num_classes);
      }
      const demo = model.weights === 'demo-random';
      const weights = demo ? 'demo-random weights' : `weights ${model.weights.slice(0, 12)}…`;
      $('model-info').textContent =
        `${model.architecture} · ${model.num_classes} classes (${model.labels_source} labels) · ` +
        `${model.input_size}×${model.input_size} input · ${weights}`;
      $('demo-warning').hidden = !demo;
    } catch (p) {
      $('model-info').textContent = 'Could not read the model description.';
      showError(p);
    }
  }

  // ---------------------------------------------------------------- choosing and asking
  async function choose(file, name) {
    state.file = file;
    state.fileName = name || 'picture';
    state.answer = null;
    state.blend = null;
    state.bitmap = null;
    state.browserDecoded = false;
    $('run').disabled = false;
    $('result').hidden = true;
    try {
      state.bitmap = await createImageBitmap(file, { imageOrientation: 'from-image' });
      state.browserDecoded = true;
    } catch (e) {
      // Not a picture this browser decodes (TIFF, or not a picture at all): the server
      // decides, and when it can, sends its own copy of the picture to blend over.
    }
    explain(null);
  }

  // Methods whose picture is not a heat map to blend here: the guided ones (three
  // channels, drawn as pytorch-grad-cam's deprocess_image) and DFF (concepts and their
  // legend). The server draws those; the page shows its picture.
  function serverDraws(method) {
    const info = state.model && (state.model.methods || []).find((m) => m.name === method);
    return Boolean(info) && ((info.channels || 1) !== 1 || info.name === 'dff');
  }

  function currentTarget() {
    return state.answer ? state.answer.target.class_index : null;
  }

  function options(target) {
    const o = {
      top_k: $('top-k').value || String(settings.top_k),
      layer: $('layer').value,
      resize: $('resize').value,
    };
    if ($('method').options.length > 1) o.method = $('method').value;
    if ($('score-map').checked) o.scores = 'road,confidence_change';
    if (target !== null && target !== undefined) o.target = String(target);
    return o;
  }

  async function explain(target) {
    if (!state.file) return;
    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    state.controller = controller;

    const opts = options(target);
    const form = new FormData();
    form.append('image', state.file, state.fileName);
    for (const [k, v] of Object.entries(opts)) form.append(k, v);
    const drawnThere = serverDraws(opts.method);
    if (drawnThere) {
      form.append('overlay', 'true');
    } else if (state.bitmap) {
      form.append('overlay', 'false');
    } else {
      // The picture as the server decoded it: the overlay at opacity 0, at the image's
      // own size (the server's default caps the overlay's longer side).
      form.append('overlay', 'true');
      form.append('alpha', '0');
      form.append('overlay_max_side', '16383');
    }
    const headers = { Accept: 'application/json' };
    const token = $('token').value.trim();
    if (token) headers.Authorization = `Bearer ${token}`;

    hideError();
    busy(true, `Explaining ${state.fileName}…`);
    const started = performance.now();
    let res;
    let text;
    try {
      state.requests += 1;
      res = await fetch('explain', { method: 'POST', body: form, headers, signal: controller.signal });
      text = await res.text();
    } catch (e) {
      if (controller.signal.aborted) return;
      busy(false, '');
      showError({ title: 'No answer from the server', detail: String(e.message || e) });
      return;
    }
    if (controller.signal.aborted) return;
    state.controller = null;
    const roundTrip = performance.now() - started;
    if (!res.ok) {
      busy(false, '');
      showError(await problemOf(res, text));
      return;
    }
    let answer;
    try {
      answer = JSON.parse(text);
    } catch (e) {
      busy(false, '');
      showError({ title: 'Unreadable answer', detail: 'The server answered with something that is not JSON.' });
      return;
    }
    try {
      if (drawnThere) {
        const field = answer.overlay_image.field;
        const type = answer.overlay_image.media_type;
        const picture = await createImageBitmap(new Blob([base64Bytes(answer[field])], { type }));
        delete answer[field];
        text = JSON.stringify(answer);
        state.answer = answer;
        state.answerText = text;
        state.roundTripMs = roundTrip;
        state.blend = null; // the opacity slider has nothing to blend
        const canvas = $('picture');
        canvas.width = picture.width;
        canvas.height = picture.height;
        canvas.getContext('2d').drawImage(picture, 0, 0);
        state.drawMs = 0;
        showAnswer();
        busy(false, `Explained ${state.fileName}: ${answer.target.label}.`);
        return;
      }
      if (!state.bitmap) {
        state.bitmap = await createImageBitmap(new Blob([base64Bytes(answer.overlay_png)], { type: 'image/png' }));
        delete answer.overlay_png;
        text = JSON.stringify(answer); // the download is the answer, not the picture
      } else if (state.bitmap.width !== answer.image.width || state.bitmap.height !== answer.image.height) {
        // The browser read the picture at another size than the server (an orientation
        // it did not apply): use the server's copy instead.
        state.bitmap = null;
        state.browserDecoded = false;
        busy(false, '');
        return explain(target);
      }
      state.answer = answer;
      state.answerText = text.length < 1e6 ? text : JSON.stringify(answer);
      state.roundTripMs = roundTrip;
      const drawStart = performance.now();
      prepareBlend();
      draw();
      state.drawMs = performance.now() - drawStart;
      showAnswer();
      busy(false, `Explained ${state.fileName}: ${answer.target.label}.`);
    } catch (e) {
      busy(false, '');
      showError({ title: 'Could not draw the answer', detail: String(e.message || e) });
    }
  }

  function busy(on, message) {
    document.body.classList.toggle('busy', on);
    $('status').textContent = message;
    $('result').setAttribute('aria-busy', on ? 'true' : 'false');
  }

  // A problem+json answer as {title, detail, status, retryAfter}; something else, as best
  // it can be said.
  async function problemOf(res, text) {
    if (text === undefined) {
      try {
        text = await res.text();
      } catch (e) {
        text = '';
      }
    }
    let p = {};
    try {
      p = JSON.parse(text);
    } catch (e) {
      p = {};
    }
    return {
      title: p.title || `${res.status} ${res.statusText || 'error'}`,
      detail: p.detail || (text && text.length < 500 ? text : ''),
      status: res.status,
      retryAfter: res.headers.get('Retry-After'),
    };
  }

  function showError(p) {
    $('error-title').textContent = p.title || 'Error';
    $('error-status').textContent = p.status ? ` (HTTP ${p.status})` : '';
    $('error-detail').textContent = p.detail || '';
    const retry = p.status === 503 || p.status === 504 || p.status === 408;
    $('error-retry').hidden = !retry;
    if (retry) {
      $('error-retry-text').textContent = p.retryAfter
        ? `The server asks to wait ${p.retryAfter} s before trying again.`
        : 'You may try again.';
    }
    $('error').hidden = false;
    if (p.status === 401) {
      $('token-field').hidden = false;
      $('token').focus();
    }
  }

  function hideError() {
    $('error').hidden = true;
  }

  // ---------------------------------------------------------------- the answer
  function showAnswer() {
    const a = state.answer;
    const pct = (s) => `${(100 * s).toFixed(2)} %`;
    $('prediction').textContent = `${a.prediction.label} (${pct(a.prediction.score)})`;
    $('target').textContent = `${a.target.class_index} ${a.target.label} (${pct(a.target.score)})`;
    const list = $('top-k-list');
    const buttons = a.top_k.map((c) => {
      const li = document.createElement('li');
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'class-bar';
      b.dataset.classIndex = String(c.class_index);
      b.dataset.score = String(c.score);
      const pressed = c.class_index === a.target.class_index;
      b.setAttribute('aria-pressed', pressed ? 'true' : 'false');
      b.setAttribute('aria-label', `${c.label}, class ${c.class_index}, ${pct(c.score)}: show its heat map`);
      const label = document.createElement('span');
      label.className = 'label';
      label.textContent = c.label;
      const index = document.createElement('span');
      index.className = 'index';
      index.textContent = `#${c.class_index}`;
      const bar = document.createElement('span');
      bar.className = 'bar';
      const fill = document.createElement('span');
      fill.className = 'fill';
      fill.style.width = `${Math.max(0, Math.min(1, c.score)) * 100}%`;
      bar.append(fill);
      const score = document.createElement('span');
      score.className = 'score';
      score.textContent = pct(c.score);
      b.append(label, index, score, bar);
      b.addEventListener('click', () => explain(c.class_index));
      li.append(b);
      return li;
    });
    list.replaceChildren(...buttons);

    // The scores of the map, and what method=auto chose among.
    const lines = [];
    if (a.candidates) {
      const ranked = a.candidates.map((c) => `${c.method} ${c.score.toFixed(3)}`).join(' · ');
      lines.push(`auto chose ${a.method} by ${a.auto_score}: ${ranked}`);
    }
    if (a.scores) {
      const listed = Object.entries(a.scores).map(([k, v]) => `${k} ${v.toFixed(3)}`);
      lines.push(`Scores: ${listed.join(' · ')}`);
    }
    $('faithfulness').textContent = lines.join('. ');
    $('faithfulness').hidden = lines.length === 0;

    const t = a.timing_ms;
    const ms = (v) => `${v.toFixed(1)} ms`;
    // `render` is the server drawing an overlay: none asked for when the page draws its own.
    const render = state.browserDecoded ? '' : `, render ${ms(t.render)}`;
    $('timing').textContent =
      `Server: ${ms(t.total)} (decode ${ms(t.decode)}, queue ${ms(t.queue)}, forward ` +
      `${ms(t.forward)}, backward ${ms(t.backward)}, scores ${ms(t.scores)}${render}) · ` +
      `round trip from this ` +
      `page: ${ms(state.roundTripMs)} · heat map drawn here: ${ms(state.drawMs)}`;
    $('caption').textContent =
      `${state.fileName}, ${a.image.width}×${a.image.height}: Grad-CAM of “${a.target.label}” ` +
      `at ${a.model.target_layer} (${a.saliency.width}×${a.saliency.height} map)` +
      (state.browserDecoded ? '' : ' · picture as the server decoded it');
    $('picture').setAttribute(
      'aria-label',
      `${state.fileName} with a heat map over it: red and yellow mark the parts that drove ` +
        `the class “${a.target.label}” most, blue the least.`
    );
    $('result').hidden = false;
  }

  // ---------------------------------------------------------------- the blend
  // The picture's region the map covers (src/preprocess.rs `prepare`).
  function regionOf(w, h, mode, size) {
    if (mode !== 'crop') return { x: 0, y: 0, width: w, height: h };
    const A = 16;
    if (w > h * A || h > w * A) {
      const [cw, ch] = w > h ? [h * A, h] : [w, w * A];
      const x = Math.floor((w - cw) / 2);
      const y = Math.floor((h - ch) / 2);
      const r = regionOf(cw, ch, mode, size);
      return { x: r.x + x, y: r.y + y, width: r.width, height: r.height };
    }
    const short = Math.round((size * 256) / 224);
    const [rw, rh] = w <= h
      ? [short, Math.max(1, Math.floor((short * h) / w))]
      : [Math.max(1, Math.floor((short * w) / h)), short];
    const left = roundHalfEven((rw - size) / 2);
    const top = roundHalfEven((rh - size) / 2);
    const sx = w / rw;
    const sy = h / rh;
    const clamp = (v, hi) => Math.min(Math.max(v, 1), hi);
    return {
      x: Math.round(left * sx),
      y: Math.round(top * sy),
      width: clamp(Math.round(size * sx), w),
      height: clamp(Math.round(size * sy), h),
    };
  }

  function roundHalfEven(v) {
    const f = Math.floor(v);
    const d = v - f;
    if (d > 0.5) return f + 1;
    if (d < 0.5) return f;
    return f % 2 === 0 ? f : f + 1;
  }

  // `x - min`, then `/ (max + 1e-7)`, in float32.
  function minMaxScale(map) {
    let min = Infinity;
    for (const v of map) min = Math.min(min, v);
    const shifted = map.map((v) => F(v - min));
    let max = 0;
    for (const v of shifted) max = Math.max(max, v);
    const d = F(max + EPS);
    return shifted.map((v) => F(v / d));
  }

  // OpenCV INTER_LINEAR taps: [i0, i1, weight of i1] per output index.
  function taps(src, dst) {
    const scale = src / dst;
    const out = new Array(dst);
    for (let d = 0; d < dst; d++) {
      const f = (d + 0.5) * scale - 0.5;
      const i = Math.floor(f);
      let t;
      if (i < 0) t = [0, 0, 0];
      else if (i >= src - 1) t = [src - 1, src - 1, 0];
      else t = [i, Math.min(i + 1, src - 1), F(f - i)];
      out[d] = t;
    }
    return out;
  }

  // Heat levels uint8(255 * mask) over the region, the mask scaled, upsampled and scaled
  // again (render.rs `HeatScale`).
  function heatLevels(map, mw, mh, rw, rh) {
    const scaled = minMaxScale(map);
    const xs = taps(mw, rw);
    const ys = taps(mh, rh);
    const rows = [];
    for (let y = 0; y < mh; y++) {
      const row = new Float32Array(rw);
      const base = y * mw;
      for (let x = 0; x < rw; x++) {
        const [x0, x1, fx] = xs[x];
        row[x] = F(F(scaled[base + x0] * F(1 - fx)) + F(scaled[base + x1] * fx));
      }
      rows.push(row);
    }
    const up = new Float32Array(rw * rh);
    let lo = Infinity;
    let hi = -Infinity;
    for (let y = 0; y < rh; y++) {
      const [y0, y1, fy] = ys[y];
      const top = rows[y0];
      const bottom = rows[y1];
      const wy = F(1 - fy);
      const off = y * rw;
      for (let x = 0; x < rw; x++) {
        const v = F(F(top[x] * wy) + F(bottom[x] * fy));
        up[off + x] = v;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
    }
    const range = rw * rh === 0 ? 0 : F(hi - lo);
    const denominator = F(range + EPS);
    const levels = new Uint8Array(rw * rh);
    for (let i = 0; i < up.length; i++) {
      const m = F(F(up[i] - lo) / denominator);
      const l = Math.trunc(F(255 * m));
      levels[i] = l > 255 ? 255 : l < 0 || Number.isNaN(l) ? 0 : l;
    }
    return levels;
  }

  function prepareBlend() {
    const a = state.answer;
    const { width: w, height: h } = a.image;
    const size = state.model ? state.model.input_size : 224;
    const mode = $('resize').value;
    const region = regionOf(w, h, mode, size);
    const map = new Float32Array(a.saliency.data.flat());
    const levels = heatLevels(map, a.saliency.width, a.saliency.height, region.width, region.height);

    const canvas = $('picture');
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    ctx.clearRect(0, 0, w, h);
    ctx.drawImage(state.bitmap, 0, 0);
    const pixels = ctx.getImageData(0, 0, w, h).data;

    // The brightest picture value under each heat level and outside the region: what the
    // blend's maximum depends on.
    const brightest = new Uint8Array(256 * 3);
    const present = new Uint8Array(256);
    const outside = [0, 0, 0];
    for (let y = 0; y < h; y++) {
      const inRows = y >= region.y && y < region.y + region.height;
      for (let x = 0; x < w; x++) {
        const p = (y * w + x) * 4;
        if (inRows && x >= region.x && x < region.x + region.width) {
          const l = levels[(y - region.y) * region.width + (x - region.x)];
          present[l] = 1;
          for (let c = 0; c < 3; c++) {
            if (pixels[p + c] > brightest[l * 3 + c]) brightest[l * 3 + c] = pixels[p + c];
          }
        } else {
          for (let c = 0; c < 3; c++) if (pixels[p + c] > outside[c]) outside[c] = pixels[p + c];
        }
      }
    }
    state.blend = { w, h, region, levels, pixels, brightest, present, outside };
    state.output = ctx.createImageData(w, h);
    const out = state.output.data;
    for (let p = 3; p < out.length; p += 4) out[p] = 255;
  }

  // show_cam_on_image's blend `alpha * jet / 255 + (1 - alpha) * pixel / 255`, rescaled by
  // its maximum, from tables (render.rs `overlay`).
  function draw() {
    const b = state.blend;
    if (!b) return;
    const alpha = F(Number($('alpha').value));
    const imageWeight = F(1 - alpha);
    const base = new Float32Array(256);
    for (let p = 0; p < 256; p++) base[p] = F(imageWeight * F(p / 255));
    const heat = new Float32Array(256 * 3);
    for (let i = 0; i < 768; i++) heat[i] = F(alpha * F(JET[i] / 255));
    let max = 0;
    for (let c = 0; c < 3; c++) max = Math.max(max, base[b.outside[c]]);
    for (let l = 0; l < 256; l++) {
      if (!b.present[l]) continue;
      for (let c = 0; c < 3; c++) {
        max = Math.max(max, F(heat[l * 3 + c] + base[b.brightest[l * 3 + c]]));
      }
    }
    const scaled = (v) => (max > 0 ? Math.min(255, Math.trunc(F(255 * F(v / max)))) : 0);
    const outsideTable = new Uint8Array(256);
    for (let p = 0; p < 256; p++) outsideTable[p] = scaled(base[p]);
    const table = new Uint8Array(256 * 768);
    for (let l = 0; l < 256; l++) {
      if (!b.present[l]) continue;
      for (let c = 0; c < 3; c++) {
        const h = heat[l * 3 + c];
        const off = (l * 3 + c) * 256;
        for (let p = 0; p < 256; p++) table[off + p] = scaled(F(h + base[p]));
      }
    }

    const out = state.output.data; // its alpha channel is 255 already
    const src = b.pixels;
    const levels = b.levels;
    const { x: rx, y: ry, width: rw, height: rh } = b.region;
    const outside = (from, to) => {
      for (let p = from; p < to; p += 4) {
        out[p] = outsideTable[src[p]];
        out[p + 1] = outsideTable[src[p + 1]];
        out[p + 2] = outsideTable[src[p + 2]];
      }
    };
    for (let y = 0; y < b.h; y++) {
      const row = y * b.w * 4;
      if (y < ry || y >= ry + rh) {
        outside(row, row + b.w * 4);
        continue;
      }
      outside(row, row + rx * 4);
      let l = (y - ry) * rw;
      const end = row + (rx + rw) * 4;
      for (let p = row + rx * 4; p < end; p += 4, l++) {
        const t = levels[l] * 768;
        out[p] = table[t + src[p]];
        out[p + 1] = table[t + 256 + src[p + 1]];
        out[p + 2] = table[t + 512 + src[p + 2]];
      }
      outside(end, row + b.w * 4);
    }
    $('picture').getContext('2d').putImageData(state.output, 0, 0);
  }

  function drawLegend() {
    const ctx = $('legend').getContext('2d');
    const img = ctx.createImageData(256, 1);
    for (let i = 0; i < 256; i++) {
      img.data.set([JET[i * 3], JET[i * 3 + 1], JET[i * 3 + 2], 255], i * 4);
    }
    ctx.putImageData(img, 0, 0);
  }

  function showAlpha() {
    $('alpha-value').textContent = `${Math.round(Number($('alpha').value) * 100)} %`;
  }

  // ---------------------------------------------------------------- downloads
  function stem() {
    const s = state.fileName.replace(/\.[^.]*$/, '').replace(/[^\w.-]+/g, '_');
    return s || 'picture';
  }

  function save(blob, name) {
    const url = URL.createObjectURL(blob);
    const a = document.createElement('a');
    a.href = url;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  function downloadPng() {
    if (!state.answer) return;
    const t = state.answer.target.class_index;
    $('picture').toBlob((blob) => blob && save(blob, `${stem()}-gradcam-${t}.png`), 'image/png');
  }

  function downloadJson() {
    if (!state.answer) return;
    const t = state.answer.target.class_index;
    save(new Blob([state.answerText], { type: 'application/json' }), `${stem()}-gradcam-${t}.json`);
  }

  function base64Bytes(b64) {
    const s = atob(b64);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  init();
})();
