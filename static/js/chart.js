// Two tiny hand-written charts, no library: horizontal bars (one group per
// metric, one bar per technique) and an SVG line chart over time.

const SVG = 'http://www.w3.org/2000/svg';

function svgElement(name, attributes) {
  const el = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, value);
  return el;
}

/**
 * Draws bar groups into `container`.
 * groups: [{title, rows: [{label, color, value, text}]}]; bars in a group share one scale.
 */
export function drawBars(container, groups) {
  container.replaceChildren();
  for (const group of groups) {
    const box = document.createElement('div');
    box.className = 'bar-group';
    const title = document.createElement('h3');
    title.textContent = group.title;
    box.append(title);
    const max = Math.max(0, ...group.rows.map((row) => row.value || 0));
    for (const row of group.rows) {
      const line = document.createElement('div');
      line.className = 'bar-row';
      const label = document.createElement('span');
      label.textContent = row.label;
      const track = document.createElement('div');
      track.className = 'bar-track';
      const bar = document.createElement('div');
      bar.className = 'bar';
      bar.style.background = row.color;
      bar.style.width = max > 0 ? `${(100 * (row.value || 0)) / max}%` : '0';
      track.append(bar);
      const value = document.createElement('span');
      value.className = 'bar-value';
      value.textContent = row.text;
      line.append(label, track, value);
      box.append(line);
    }
    container.append(box);
  }
}

/**
 * Draws lines into an <svg viewBox="0 0 600 260">.
 * series: [{color, points: [[timeMs, value], ...]}]; format(value) labels the y axis.
 */
export function drawLines(svg, series, format = String) {
  const width = 600, height = 260, left = 60, right = 10, top = 10, bottom = 24;
  svg.replaceChildren();
  const all = series.flatMap((s) => s.points);
  if (all.length === 0) return;
  const t0 = Math.min(...all.map((p) => p[0]));
  const t1 = Math.max(t0 + 1000, ...all.map((p) => p[0]));
  const vMax = niceCeiling(Math.max(1, ...all.map((p) => p[1])));
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
  const y = (v) => height - bottom - (v / vMax) * (height - top - bottom);

  // grid lines and y labels: 5 steps for 1, 5, 10, ... and 4 for 2, 20, ... so every label is round
  const steps = String(vMax)[0] === '2' ? 4 : 5;
  for (let i = 0; i <= steps; i++) {
    const v = (vMax * i) / steps;
    svg.append(svgElement('line', { x1: left, x2: width - right, y1: y(v), y2: y(v), class: 'axis' }));
    const label = svgElement('text', { x: left - 6, y: y(v) + 4, 'text-anchor': 'end' });
    label.textContent = format(v);
    svg.append(label);
  }
  const seconds = Math.round((t1 - t0) / 1000);
  const axisLabel = svgElement('text', { x: width - right, y: height - 6, 'text-anchor': 'end' });
  axisLabel.textContent = `${seconds} s`;
  svg.append(axisLabel);

  for (const s of series) {
    if (s.points.length === 0) continue;
    const points = s.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    svg.append(svgElement('polyline', { points, fill: 'none', stroke: s.color, 'stroke-width': 2.5, 'stroke-linejoin': 'round' }));
  }
}

/** 1, 2, 5, 10, 20, 50, ...: a round number at or above v. */
function niceCeiling(v) {
  const power = 10 ** Math.floor(Math.log10(v));
  for (const step of [1, 2, 5, 10]) if (v <= step * power) return step * power;
  return 10 * power;
}
