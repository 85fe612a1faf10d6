// dialsum's error-analysis pages: one table of dialogues, sorted, filtered and searched in the browser.
// Every text is inserted with textContent (never as HTML), so a dialogue holding <, & or quotes shows as written.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const PAGE = data.page_size || 100;
  const state = { key: data.default_sort.key, dir: data.default_sort.dir, page: 0, rows: data.rows };
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "class") node.className = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  // A text as its pieces: [text, classes] pairs, split by the page's writer (matched morphemes, tags, masks).
  function pieces(parts) {
    const box = el("span", {});
    if (!parts || !parts.length) {
      box.append(el("span", { class: "empty" }, "(empty)"));
      return box;
    }
    for (const [text, classes] of parts) {
      box.append(classes ? el("span", { class: classes }, text) : document.createTextNode(text));
    }
    return box;
  }

  function fmt(value, digits) {
    if (value === null || value === undefined || value === "") return "—";
    return typeof value === "number" ? value.toFixed(digits === undefined ? 2 : digits) : String(value);
  }

  function visible() {
    const query = $("search").value.trim().toLowerCase();
    const topic = $("topic").value;
    const bucket = $("length").value;
    const flags = [...document.querySelectorAll("input[data-flag]:checked")].map((box) => box.dataset.flag);
    let rows = data.rows.filter((row) =>
      (!topic || row.topic === topic) &&
      (!bucket || row.length_bucket === bucket) &&
      flags.every((flag) => row.flags[flag]) &&
      (!query || row.search.includes(query)));
    const { key, dir } = state;
    if (key) {
      const sign = dir === "asc" ? 1 : -1;
      rows = rows.slice().sort((a, b) => {
        const x = a.values[key], y = b.values[key];
        const missingX = x === null || x === undefined, missingY = y === null || y === undefined;
        if (missingX || missingY) return missingX - missingY; // missing values last, either way
        if (x < y) return -sign;
        if (x > y) return sign;
        return a.order - b.order; // ties keep the file's order
      });
    }
    return rows;
  }

  function details(row, span) {
    const cell = el("td", { colspan: String(span) });
    if (row.turns && row.turns.length) {
      const keep = row.turns.length - row.turns_cut;
      row.turns.forEach((turn, index) => {
        if (index === keep && row.turns_cut) {
          cell.append(el("div", { class: "cutmark" },
            `✂ trimmed here: the model never saw the ${row.turns_cut} turn(s) below (training.max_length)`));
        }
        cell.append(el("div", { class: "turn" + (index >= keep ? " cut" : "") }, pieces(turn)));
      });
    } else {
      cell.append(el("span", { class: "empty" }, "(dialogue text not available)"));
    }
    return el("tr", { class: "details" }, cell);
  }

  function render() {
    const rows = visible();
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    const body = $("rows").tBodies[0];
    body.replaceChildren();
    for (const row of rows.slice(state.page * PAGE, (state.page + 1) * PAGE)) {
      const tr = el("tr", { class: "sample", "data-id": row.id });
      tr.append(el("td", {}, row.id), el("td", {}, row.topic || "—"));
      for (const column of data.columns) {
        const value = row.values[column.key];
        const classes = "num" + (column.signed && value > 0 ? " better" : column.signed && value < 0 ? " worse" : "");
        tr.append(el("td", { class: classes, "data-key": column.key }, fmt(value, column.digits)));
      }
      for (const texts of row.texts) {
        const cell = el("td", {});
        for (const text of texts) cell.append(el("div", { class: "ref" }, pieces(text)));
        tr.append(cell);
      }
      const flagCell = el("td", {});
      for (const [flag, on] of Object.entries(row.flags)) {
        if (on) flagCell.append(el("span", { class: "flag" + (flag === "trimmed" || flag === "cleaned" ? "" : " bad") }, flag));
      }
      tr.append(flagCell);
      tr.addEventListener("click", () => {
        const next = tr.nextSibling;
        if (next && next.classList.contains("details")) next.remove();
        else tr.after(details(row, tr.children.length));
      });
      body.append(tr);
    }
    $("count").textContent = `${rows.length} of ${data.rows.length} dialogues`;
    $("page").textContent = `page ${state.page + 1} of ${pages}`;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    for (const th of document.querySelectorAll("#rows th[data-key]")) {
      th.classList.toggle("sorted-asc", th.dataset.key === state.key && state.dir === "asc");
      th.classList.toggle("sorted-desc", th.dataset.key === state.key && state.dir === "desc");
    }
  }

  function setup() {
    const head = $("rows").tHead.rows[0];
    head.append(el("th", { class: "id-col" }, "id"), el("th", { class: "topic-col" }, "topic"));
    for (const column of data.columns) {
      const th = el("th", { "data-key": column.key, "data-numeric": "1", title: column.title || column.label }, column.label);
      th.addEventListener("click", () => {
        // first click: lowest first (where the mistakes are); again: the other way
        state.dir = state.key === column.key && state.dir === "asc" ? "desc" : "asc";
        state.key = column.key;
        state.page = 0;
        render();
      });
      head.append(th);
    }
    for (const label of data.text_columns) head.append(el("th", {}, label));
    head.append(el("th", { class: "flags-col" }, "flags"));
    const topics = [...new Set(data.rows.map((row) => row.topic).filter(Boolean))].sort();
    for (const topic of topics) $("topic").append(el("option", { value: topic }, topic));
    for (const bucket of data.length_buckets) $("length").append(el("option", { value: bucket }, bucket));
    for (const flag of data.flags) {
      const box = el("input", { type: "checkbox", id: "flag-" + flag, "data-flag": flag });
      box.addEventListener("change", () => { state.page = 0; render(); });
      $("flags").append(el("label", {}, box, " " + flag));
    }
    for (const id of ["search", "topic", "length"]) $(id).addEventListener("input", () => { state.page = 0; render(); });
    $("prev").addEventListener("click", () => { state.page -= 1; render(); });
    $("next").addEventListener("click", () => { state.page += 1; render(); });
    render();
    document.body.dataset.ready = "1";
  }

  setup();
})();
