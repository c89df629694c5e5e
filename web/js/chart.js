// A small live line chart on <canvas>: fixed time window ending now, fixed
// y range, one line per series. Drawn only when asked (once per frame at
// most), sized to the device pixel ratio so lines stay sharp.

export class LineChart {
  constructor(canvas, { series, windowMs, yMax = 100, yLabel = (v) => `${v}%` }) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.series = series; // [{key, label, color}]
    this.windowMs = windowMs;
    this.yMax = yMax;
    this.yLabel = yLabel;
  }

  resize() {
    const dpr = window.devicePixelRatio || 1;
    const rect = this.canvas.getBoundingClientRect();
    const w = Math.max(1, Math.round(rect.width * dpr));
    const hgt = Math.max(1, Math.round(rect.height * dpr));
    if (this.canvas.width !== w || this.canvas.height !== hgt) {
      this.canvas.width = w;
      this.canvas.height = hgt;
    }
    return dpr;
  }

  // `data` = {t: [ms…], [key]: [value|null…]}; `now` = the window's right edge.
  draw(data, now, yMax = this.yMax) {
    const dpr = this.resize();
    const { ctx, canvas } = this;
    const W = canvas.width;
    const H = canvas.height;
    const pad = { l: 40 * dpr, r: 8 * dpr, t: 8 * dpr, b: 20 * dpr };
    const pw = W - pad.l - pad.r;
    const ph = H - pad.t - pad.b;
    const styles = getComputedStyle(canvas);
    const grid = styles.getPropertyValue('--grid').trim() || '#334';
    const ink = styles.getPropertyValue('--ink-dim').trim() || '#889';
    ctx.clearRect(0, 0, W, H);
    ctx.font = `${11 * dpr}px system-ui, sans-serif`;
    ctx.lineWidth = dpr;
    ctx.strokeStyle = grid;
    ctx.fillStyle = ink;
    ctx.textBaseline = 'middle';
    for (let i = 0; i <= 4; i++) {
      const v = (yMax * i) / 4;
      const y = pad.t + ph - (v / yMax) * ph;
      ctx.beginPath();
      ctx.moveTo(pad.l, y);
      ctx.lineTo(W - pad.r, y);
      ctx.stroke();
      ctx.fillText(this.yLabel(Math.round(v)), 4 * dpr, y);
    }
    ctx.textBaseline = 'top';
    const minutes = Math.round(this.windowMs / 60000);
    for (let m = 0; m <= minutes; m++) {
      const x = pad.l + pw - ((m * 60000) / this.windowMs) * pw;
      ctx.fillText(m === 0 ? 'now' : `-${m}m`, x - 10 * dpr, pad.t + ph + 4 * dpr);
    }
    const t0 = now - this.windowMs;
    const xs = (t) => pad.l + ((t - t0) / this.windowMs) * pw;
    const ys = (v) => pad.t + ph - (Math.max(0, Math.min(yMax, v)) / yMax) * ph;
    ctx.save();
    ctx.beginPath();
    ctx.rect(pad.l, pad.t, pw, ph);
    ctx.clip();
    ctx.lineWidth = 2 * dpr;
    ctx.lineJoin = 'round';
    for (const s of this.series) {
      const values = data[s.key];
      if (!values) continue;
      ctx.strokeStyle = s.color;
      ctx.beginPath();
      let pen = false;
      for (let i = 0; i < data.t.length; i++) {
        const v = values[i];
        if (v === null || v === undefined || data.t[i] < t0 - 60000) {
          pen = false;
          continue;
        }
        const x = xs(data.t[i]);
        const y = ys(v);
        if (pen) ctx.lineTo(x, y);
        else ctx.moveTo(x, y);
        pen = true;
      }
      ctx.stroke();
    }
    ctx.restore();
  }
}
