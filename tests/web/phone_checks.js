// Run in a page by tests/web/screenshots.py (problems()): every way a phone's screen can cut,
// hide or scramble what a page shows. Takes [selectors that must be shown, the screen's width];
// returns what is wrong, in words (an empty list: nothing).
([keys, width]) => {
  const problems = [];
  const doc = document.documentElement;
  const dir = doc.getAttribute("dir") || "ltr";
  const name = (el) => {
    const classes = typeof el.className === "string" && el.className.trim()
      ? "." + el.className.trim().split(/\s+/).join(".") : "";
    const text = (el.textContent || el.value || "").trim().replace(/\s+/g, " ").slice(0, 40);
    return `${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""}${classes} "${text}"`;
  };
  const shown = (el) => {
    const rects = Array.from(el.getClientRects());
    const style = getComputedStyle(el);
    return style.visibility !== "hidden" && style.display !== "none" &&
      rects.some((r) => r.width > 0 && r.height > 0);
  };
  const lines = (range) => new Set(
    Array.from(range.getClientRects()).filter((r) => r.width > 0).map((r) => Math.round(r.bottom))
  ).size;

  // A phone's browser zooms out a page wider than the screen: its window grows to fit it.
  if (window.innerWidth !== width) {
    problems.push(`the window is ${window.innerWidth} px wide on a ${width} px screen`);
  }
  if (doc.scrollWidth > window.innerWidth) {
    problems.push(`the page is ${doc.scrollWidth} px wide on a ${width} px screen`);
  }
  for (const key of keys) {
    if (!Array.from(document.querySelectorAll(key)).some(shown)) {
      problems.push(`nothing shown for ${key}`);
    }
  }

  // Nothing outside the screen, even inside a box that scrolls or clips it.
  for (const el of document.body.querySelectorAll("*")) {
    if (!shown(el) || (el.closest("svg") && el.tagName.toLowerCase() !== "svg")) continue;
    const out = Array.from(el.getClientRects())
      .find((r) => r.width > 0 && (r.left < -0.5 || r.right > width + 0.5));
    if (out) {
      const span = `${Math.round(out.left)}..${Math.round(out.right)} of ${width}`;
      problems.push(`${name(el)} is outside the screen (${span})`);
    }
  }

  // No value (an address, a host name, an AE title, a code, a port, a time, a version) is cut
  // across lines. Words of prose may break at their hyphens; a value is a word with a digit,
  // a dot, a colon, a slash, an underscore or an @ in it, or any word of a value's element.
  const values = ".code, .ltr, bdi[dir=ltr], .time, .token, code, .nowrap";
  const texts = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (texts.nextNode()) {
    const node = texts.currentNode, parent = node.parentElement;
    if (!parent || !shown(parent) || parent.closest("svg, script, style, textarea, option")) {
      continue;
    }
    const inValue = parent.closest(values) !== null;
    for (const word of node.textContent.matchAll(/(?<!\S)\S{2,28}(?!\S)/g)) {
      const core = word[0].replace(/^[(«"']+/, "").replace(/[.,;:!?)»"'،؛]+$/, "");
      if (!inValue && !/[\d.:/_@]/.test(core)) continue;
      const range = document.createRange();
      range.setStart(node, word.index);
      range.setEnd(node, word.index + word[0].length);
      const count = lines(range);
      if (count > 1) problems.push(`"${word[0]}" in ${name(parent)} is cut across ${count} lines`);
    }
  }

  // Left-to-right values read left to right, even inside Persian text: the first character
  // of one on a single line is left of its last.
  for (const el of document.body.querySelectorAll(".code, .ltr, [dir=ltr], bdi[dir=ltr]")) {
    if (!shown(el) || el.matches("input, textarea")) continue;
    const whole = document.createRange();
    whole.selectNodeContents(el);
    const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
    const nodes = [];
    while (walker.nextNode()) {
      if (walker.currentNode.textContent.trim()) nodes.push(walker.currentNode);
    }
    if (lines(whole) !== 1 || !nodes.length) continue;
    const at = (node, i) => {
      const r = document.createRange();
      r.setStart(node, i);
      r.setEnd(node, i + 1);
      return r.getBoundingClientRect();
    };
    const first = nodes[0], last = nodes[nodes.length - 1];
    const a = at(first, first.textContent.search(/\S/));
    const z = at(last, last.textContent.trimEnd().length - 1);
    if (a.width && z.width && a.left > z.left) problems.push(`${name(el)} reads right to left`);
  }

  // A card's row and a fact keep the page's direction (the label first), whatever the
  // script of their value.
  const rows = "td[data-label], dl.facts dt, dl.facts dd:not(.ltr):not(.code)";
  for (const el of document.querySelectorAll(rows)) {
    const direction = getComputedStyle(el).direction;
    if (shown(el) && direction !== dir) problems.push(`${name(el)} flips to ${direction}`);
  }
  return problems;
}
