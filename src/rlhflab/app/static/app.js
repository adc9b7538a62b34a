/* rlhflab feedback: the app's only script. Every page works without it; it adds the time spent on
   an item, keyboard shortcuts, drag-to-rank, and the dashboard's live numbers. Text from the server
   is only ever set with textContent / value, never parsed as HTML. */
"use strict";

(function () {
  const body = document.body;
  const loadedAt = performance.now();

  /* ---------- the time spent on an item: page load to submit ---------- */
  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-timed")) return;
    const seconds = form.querySelector('input[name="seconds"]');
    if (seconds) seconds.value = ((performance.now() - loadedAt) / 1000).toFixed(2);
  });

  /* ---------- keyboard shortcuts ---------- */
  function isTyping(target) {
    if (!(target instanceof Element)) return false;
    if (target.closest("textarea, select, [contenteditable]")) return true;
    const input = target.closest("input");
    return Boolean(input) && !["radio", "checkbox", "button", "submit", "hidden"].includes(input.type);
  }

  function press(id) {
    const element = document.getElementById(id);
    if (element && !element.disabled) {
      element.click();
      return true;
    }
    return false;
  }

  const task = ["label", "adjudicate"].includes(body.dataset.page) ? body.dataset.task : null;
  const handlers = {
    pairwise: function (event) {
      const keys = { 1: "choice-left", ArrowLeft: "choice-left", 2: "choice-right", ArrowRight: "choice-right",
        t: "choice-tie", b: "choice-both-bad" };
      return keys[event.key] ? press(keys[event.key]) : false;
    },
    binary: function (event) {
      const keys = { g: "binary-good", x: "binary-bad" };
      return keys[event.key] ? press(keys[event.key]) : false;
    },
    rating: ratingKey,
    turns: turnsKey,
    ranking: rankingKey,
    critique: function () { return false; },
  };

  document.addEventListener("keydown", function (event) {
    if (!task || event.defaultPrevented) return;
    if (task === "critique" && event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      if (press("submit")) event.preventDefault();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || isTyping(event.target)) return;
    const onControl = event.target instanceof Element && event.target.closest("button, a, summary");
    if (event.key === "Enter" && onControl) return; // Enter on a focused button does what the button says
    let handled = handlers[task] ? handlers[task](event) : false;
    if (!handled && (event.key === "s" || event.key === "S")) handled = press("skip");
    if (handled) event.preventDefault();
  });

  /* ---------- rating: digits score the current attribute, then move on (turns: g / x, the current turn) ---------- */
  const GROUPS = "fieldset.likert, fieldset.turn-verdict";
  const groups = Array.from(document.querySelectorAll(GROUPS));

  function currentGroup() {
    const active = document.activeElement instanceof Element ? document.activeElement.closest(GROUPS) : null;
    if (active) return groups.indexOf(active);
    const open = groups.findIndex(function (g) { return !g.querySelector("input:checked"); });
    return open >= 0 ? open : groups.length - 1;
  }

  function markCurrent(index) {
    groups.forEach(function (g, i) { g.classList.toggle("is-current", i === index); });
  }

  function pick(value) {
    const index = currentGroup();
    const radio = groups[index].querySelector('input[value="' + value + '"]');
    if (!radio) return false;
    radio.checked = true;
    radio.dispatchEvent(new Event("change", { bubbles: true }));
    const next = Math.min(index + 1, groups.length - 1);
    const target = groups[next].querySelector("input:checked") || groups[next].querySelector("input");
    if (next !== index && target) target.focus();
    else radio.focus();
    markCurrent(next);
    return true;
  }

  function ratingKey(event) {
    if (!groups.length) return false;
    if (/^[1-7]$/.test(event.key)) return pick(event.key);
    if (event.key === "Enter") return press("submit");
    return false;
  }

  function turnsKey(event) {
    if (!groups.length) return false;
    const verdict = { g: "yes", x: "no" }[event.key];
    if (verdict) return pick(verdict);
    if (event.key === "Enter") return press("submit");
    return false;
  }

  if ((task === "rating" || task === "turns") && groups.length) {
    markCurrent(0);
    document.addEventListener("focusin", function () {
      const index = currentGroup();
      if (index >= 0) markCurrent(index);
    });
  }

  /* ---------- ranking: drag, or digits + arrows; the rank selects are what the form sends ---------- */
  const list = document.getElementById("ranking");
  const status = document.getElementById("ranking-status");
  let selected = null;
  let dragged = null;

  function rankItems() {
    return list ? Array.from(list.querySelectorAll(".rank-item")) : [];
  }

  function syncRanks(moved) {
    rankItems().forEach(function (item, i) {
      const select = item.querySelector("select");
      if (select) select.value = String(i + 1);
    });
    if (moved && status) {
      const rank = rankItems().indexOf(moved) + 1;
      status.textContent = "Response " + (Number(moved.dataset.position) + 1) + " is now ranked " + rank + ".";
    }
  }

  function select(item) {
    rankItems().forEach(function (other) { other.classList.toggle("is-selected", other === item); });
    selected = item;
    if (item) {
      item.setAttribute("tabindex", "-1");
      item.focus({ preventScroll: false });
    }
  }

  function rankingKey(event) {
    if (!list) return false;
    if (/^[1-9]$/.test(event.key)) {
      const item = list.querySelector('.rank-item[data-position="' + (Number(event.key) - 1) + '"]');
      if (!item) return false;
      select(item);
      return true;
    }
    if ((event.key === "ArrowUp" || event.key === "ArrowDown") && selected) {
      if (event.key === "ArrowUp" && selected.previousElementSibling) {
        selected.previousElementSibling.before(selected);
      } else if (event.key === "ArrowDown" && selected.nextElementSibling) {
        selected.nextElementSibling.after(selected);
      }
      syncRanks(selected);
      selected.focus();
      return true;
    }
    if (event.key === "Escape" && selected) {
      select(null);
      return true;
    }
    if (event.key === "Enter") return press("submit");
    return false;
  }

  function clearDropMarks() {
    rankItems().forEach(function (item) { item.classList.remove("drop-before", "drop-after"); });
  }

  if (list) {
    list.addEventListener("click", function (event) {
      if (event.target instanceof Element && event.target.closest("select, label")) return;
      const item = event.target instanceof Element ? event.target.closest(".rank-item") : null;
      if (item) select(item === selected ? null : item);
    });
    list.addEventListener("dragstart", function (event) {
      dragged = event.target instanceof Element ? event.target.closest(".rank-item") : null;
      if (!dragged) return;
      dragged.classList.add("is-dragging");
      event.dataTransfer.effectAllowed = "move";
      event.dataTransfer.setData("text/plain", dragged.dataset.position);
    });
    list.addEventListener("dragover", function (event) {
      if (!dragged) return;
      event.preventDefault();
      clearDropMarks();
      const item = event.target instanceof Element ? event.target.closest(".rank-item") : null;
      if (item && item !== dragged) {
        const box = item.getBoundingClientRect();
        item.classList.add(event.clientY > box.top + box.height / 2 ? "drop-after" : "drop-before");
      }
    });
    list.addEventListener("drop", function (event) {
      if (!dragged) return;
      event.preventDefault();
      const item = event.target instanceof Element ? event.target.closest(".rank-item") : null;
      if (item && item !== dragged) {
        if (item.classList.contains("drop-after")) item.after(dragged);
        else item.before(dragged);
        syncRanks(dragged);
      }
    });
    list.addEventListener("dragend", function () {
      clearDropMarks();
      if (dragged) dragged.classList.remove("is-dragging");
      dragged = null;
    });
    list.addEventListener("change", function (event) {
      const changed = event.target instanceof HTMLSelectElement ? event.target : null;
      if (!changed) return;
      const item = changed.closest(".rank-item");
      const others = rankItems().filter(function (other) { return other !== item; });
      others.splice(Number(changed.value) - 1, 0, item);
      others.forEach(function (other) { list.appendChild(other); });
      syncRanks(item);
    });
  }

  /* ---------- critique: start the correction from the response's text ---------- */
  const copy = document.getElementById("copy-completion");
  if (copy) {
    copy.hidden = false;
    copy.addEventListener("click", function () {
      const source = document.getElementById("completion-text");
      const correction = document.getElementById("correction");
      if (source && correction) {
        correction.value = source.textContent;
        correction.focus();
      }
    });
  }

  /* ---------- admin: the invitation link selects itself ---------- */
  const link = document.getElementById("invitation-link");
  if (link) {
    link.addEventListener("focus", function () { link.select(); });
  }

  /* ---------- dashboard: poll the stats and update the numbers in place ---------- */
  function format(value, kind) {
    if (kind === undefined || kind === "") return value === null || value === undefined ? "" : String(value);
    if (value === null || value === undefined || (typeof value === "number" && !isFinite(value))) return "—";
    if (kind === "int") return String(value);
    if (kind === "rate") return Number(value).toFixed(1);
    if (kind === "signed") {
      const text = Number(value).toFixed(3);
      return text.startsWith("-") ? text : "+" + text;
    }
    return Number(value).toFixed(3);
  }

  function fillRow(row, annotator) {
    row.classList.toggle("flagged", Boolean(annotator.flagged));
    row.classList.toggle("excluded", Boolean(annotator.excluded));
    row.querySelectorAll("[data-field]").forEach(function (cell) {
      const field = cell.dataset.field;
      if (cell.dataset.format === "flag") {
        cell.textContent = annotator.flagged ? "yes: " + (annotator.reason || "") : "no";
      } else if (cell.dataset.format === "excluded") {
        cell.textContent = annotator.excluded ? "excluded" : "included";
      } else {
        cell.textContent = format(annotator[field], cell.dataset.format);
      }
    });
    const flag = row.querySelector('input[name="excluded"]');
    if (flag) flag.value = annotator.excluded ? "0" : "1";
    const button = row.querySelector("button.exclude");
    if (button) button.textContent = annotator.excluded ? "Include" : "Exclude";
  }

  function newRow(name) {
    const template = document.getElementById("annotator-row");
    if (!template) return null;
    const row = template.content.firstElementChild.cloneNode(true);
    row.dataset.annotator = name;
    row.querySelector("th").textContent = name;
    const username = row.querySelector('input[name="username"]');
    if (username) username.value = name;
    return row;
  }

  function updateStats(stats) {
    document.querySelectorAll("[data-stat]").forEach(function (element) {
      const key = element.dataset.stat;
      if (key === "alpha_note") {
        element.textContent = stats.alpha === null && stats.reasons ? stats.reasons.krippendorff_alpha || "" : "";
      } else if (key in stats) {
        element.textContent = format(stats[key], element.dataset.format);
      }
    });
    const tbody = document.querySelector("#annotators tbody");
    if (tbody && Array.isArray(stats.annotators)) {
      const rows = new Map();
      tbody.querySelectorAll("tr[data-annotator]").forEach(function (row) { rows.set(row.dataset.annotator, row); });
      stats.annotators.forEach(function (annotator) {
        let row = rows.get(annotator.annotator);
        if (!row) {
          row = newRow(annotator.annotator);
          if (!row) return;
          const empty = tbody.querySelector("tr.empty-row");
          if (empty) empty.remove();
          tbody.appendChild(row);
        }
        fillRow(row, annotator);
      });
    }
    const updated = document.getElementById("updated");
    if (updated) updated.textContent = "Updated " + new Date().toLocaleTimeString();
  }

  const statsUrl = body.dataset.statsUrl;
  if (statsUrl) {
    const every = Number(body.dataset.pollMs) || 5000;
    const poll = function () {
      if (document.hidden) {
        setTimeout(poll, every);
        return;
      }
      fetch(statsUrl, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (stats) { if (stats) updateStats(stats); })
        .catch(function () { /* offline for a moment: try again next time */ })
        .finally(function () { setTimeout(poll, every); });
    };
    setTimeout(poll, every);
  }
})();
