// Where a node's telemetry chips go in the Vue node renderer (pure geometry, screen pixels).
// Rects are {left, top, right, bottom}. The chips sit outside the node, above it if that covers
// nothing (another node's widgets, a group's title bar, chips already placed), else the next
// candidate; if every candidate covers something, the one covering least.

export function overlapArea(a, b) {
  const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
  const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
  return w > 0 && h > 0 ? w * h : 0;
}

export function rectAt(left, top, size) {
  return { left, top, right: left + size.w, bottom: top + size.h };
}

// node: the node's rect; size: {w, h} of the chip row; obstacles: rects it must not cover;
// hidden(rect): area of the rect something else on the page (a toolbar) would hide
export function placeChips(node, size, obstacles, gap = 3, hidden = () => 0) {
  const above = node.top - gap - size.h;
  const below = node.bottom + gap;
  const candidates = [
    rectAt(node.left, above, size),
    rectAt(node.right - size.w, above, size),
    rectAt(node.left, below, size),
    rectAt(node.right - size.w, below, size),
  ];
  let best = null;
  let bestArea = Infinity;
  for (const [index, rect] of candidates.entries()) {
    const area = obstacles.reduce((sum, o) => sum + overlapArea(rect, o), 0) + hidden(rect);
    if (area === 0) return { ...rect, side: index < 2 ? "above" : "below", covers: 0 };
    if (area < bestArea) { best = { ...rect, side: index < 2 ? "above" : "below", covers: area }; bestArea = area; }
  }
  return best;
}
