// Building DOM from nodes, never from markup: every string becomes a text node, so shop data stays text.
const SVG = 'http://www.w3.org/2000/svg';
// Bidirectional embedding, override and isolate controls: they could make a shop's "1042" read
// as "2401". The server refuses them in one-line text; anything stored before loses them here.
const BIDI_CONTROLS = /[\u202a-\u202e\u2066-\u2069]/g;

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = String(value).replace(BIDI_CONTROLS, '');
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child != null && child !== false) el.append(child);
  }
  return el;
}

// 24×24 stroke icons, one path each.
const PATHS = {
  confirmed: 'M12 3a9 9 0 1 0 0 18 9 9 0 0 0 0-18zM8 12l3 3 5-6',
  processing: 'M21 8l-9-5-9 5 9 5 9-5zM3 8v8l9 5 9-5V8M12 13v8',
  shipped: 'M2 6h12v10H2zM14 10h4l3 3v3h-7zM6 19a2 2 0 1 0 .01 0M17 19a2 2 0 1 0 .01 0',
  in_transit: 'M2 6h12v10H2zM14 10h4l3 3v3h-7zM6 19a2 2 0 1 0 .01 0M17 19a2 2 0 1 0 .01 0',
  out_for_delivery: 'M12 21s-7-6.5-7-12a7 7 0 0 1 14 0c0 5.5-7 12-7 12zM12 7a2 2 0 1 0 .01 0',
  delivered: 'M3 11l9-8 9 8M5 9v12h14V9M9 15l2 2 4-4',
  attempted: 'M12 3a9 9 0 1 0 0 18 9 9 0 0 0 0-18zM12 7v5l3 3',
  available_for_pickup: 'M3 9l2-5h14l2 5M4 9v11h16V9M9 20v-6h6v6',
  exception: 'M12 3 2 21h20L12 3zM12 10v5M12 18v.01',
  returned: 'M9 14 4 9l5-5M4 9h11a5 5 0 0 1 0 10h-3',
  cancelled: 'M12 3a9 9 0 1 0 0 18 9 9 0 0 0 0-18zM9 9l6 6M15 9l-6 6',
  box: 'M21 8l-9-5-9 5 9 5 9-5zM3 8v8l9 5 9-5V8M12 13v8',
};

export function icon(name) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  svg.setAttribute('fill', 'none');
  svg.setAttribute('stroke', 'currentColor');
  svg.setAttribute('stroke-width', '2');
  svg.setAttribute('stroke-linecap', 'round');
  svg.setAttribute('stroke-linejoin', 'round');
  const path = document.createElementNS(SVG, 'path');
  path.setAttribute('d', PATHS[name] || PATHS.box);
  svg.append(path);
  return svg;
}

/** Replace what a container shows and move focus for screen readers on a new screen. */
export function show(container, ...nodes) {
  container.replaceChildren(...nodes);
}
