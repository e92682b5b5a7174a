package ui

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// runScript runs app.js under Node, in a context with just enough of a browser for it to
// load (a document whose elements take anything, no network), then probe; it returns
// what probe prints. Without node the test skips.
func runScript(t *testing.T, probe string) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not installed: the status page's script is not run")
	}
	app, err := files.ReadFile("static/app.js")
	if err != nil {
		t.Fatal(err)
	}
	harness := `
const vm = require("vm");
const fs = require("fs");
const anything = () => new Proxy(function () {}, {
  get: (_, k) => (k === Symbol.toPrimitive ? () => "" : anything()),
  set: () => true,
  apply: () => anything(),
});
const ctx = {
  console, Date, Map, Set, Promise, JSON, Math, Number, String, Object, Array, NaN, Infinity,
  document: { getElementById: () => anything(), createElement: () => anything(), createTextNode: () => anything(), createElementNS: () => anything() },
  sessionStorage: { getItem: () => null, setItem: () => {} },
  fetch: () => new Promise(() => {}),
  setInterval: () => 0, setTimeout: () => 0, clearTimeout: () => {}, AbortController, Headers,
  Node: function () {},
};
vm.createContext(ctx);
vm.runInContext(fs.readFileSync(0, "utf8"), ctx);
vm.runInContext(process.argv[1], ctx);
`
	cmd := exec.Command(node, "-e", harness, probe)
	cmd.Stdin = strings.NewReader(string(app))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// A page left open (a wall display) keeps an hour of history: the ids of the jobs it saw
// start or load are forgotten with the rest of the hour, or its memory grows for as long
// as it stays open.
func TestStatusPageForgetsJobsAfterTheHour(t *testing.T) {
	t.Parallel()
	got := runScript(t, `
let now = Date.parse("2026-12-01T10:00:00Z");
Date.now = () => now;
for (let i = 0; i < 500; i++) {
  const started = new Date(now).toISOString();
  const job = { id: "job" + i, model: "tiny-a", created_at: started, started_at: started, state: "loading" };
  record({ depth: {}, running: job }, [job], null);
  now += 60 * 1000; // a job a minute
}
console.log(history.seenStarts.size, history.loadSeen.size, history.waits.length);
`)
	var starts, loads, waits int
	if _, err := fmt.Sscan(got, &starts, &loads, &waits); err != nil {
		t.Fatalf("probe printed %q: %v", got, err)
	}
	// An hour of a job a minute: about 60 each (the oldest minute's edge either way).
	if starts > 62 || loads > 62 {
		t.Fatalf("after 500 minutes the page remembers %d started and %d loading jobs, want the last hour's (~60)", starts, loads)
	}
	if starts < 58 || waits < 58 {
		t.Fatalf("the last hour forgotten too: %d started jobs remembered, %d waits", starts, waits)
	}
}

// Every reason a worker pauses for (GET /queue's paused.reason) is said in words on the
// status page, not shown as its code.
func TestStatusPageNamesEveryPauseReason(t *testing.T) {
	t.Parallel()
	for _, reason := range []string{broker.PauseTargetUnreachable, broker.PauseTargetBusy, broker.PauseStoreRefusesWrites} {
		got := runScript(t, fmt.Sprintf(`console.log(PAUSE_REASONS[%q] || "")`, reason))
		if got == "" || got == reason {
			t.Errorf("pause reason %q: words %q, want some", reason, got)
		}
	}
}

// A poll that gets no answer (foreman frozen, or its connection dead: a fetch has no
// time limit of its own) is given up, and the page says that what it shows is old,
// rather than keep its last "updated" line over the data of then; the next poll runs.
func TestStatusPageSaysWhenForemanDoesNotAnswer(t *testing.T) {
	t.Parallel()
	got := runScript(t, `
const timers = [];
setTimeout = (fn, ms) => { timers.push(fn); return timers.length; };
clearTimeout = (id) => { if (id) timers[id - 1] = null; };
let fetched = 0;
fetch = (path, opts) => new Promise((_, reject) => {
  fetched++;
  const signal = opts && opts.signal;
  if (signal) signal.addEventListener("abort", () => reject(new Error("The operation was aborted.")));
});
const said = [];
setStatus = (text, bad) => said.push((bad ? "BAD: " : "ok: ") + text);
polling = false; // the poll made at load hangs on the harness's fetch
(async () => {
  poll();
  for (const fn of timers.splice(0)) if (fn) fn(); // the time limit passes
  for (let i = 0; i < 50 && polling; i++) await null;
  console.log(JSON.stringify({ said, polling, fetched }));
})();
`)
	var out struct {
		Said    []string `json:"said"`
		Polling bool     `json:"polling"`
		Fetched int      `json:"fetched"`
	}
	if err := json.Unmarshal([]byte(got), &out); err != nil {
		t.Fatalf("probe printed %q: %v", got, err)
	}
	if out.Fetched == 0 {
		t.Fatalf("the poll fetched nothing (status %q): the harness lacks what the script needs", out.Said)
	}
	if out.Polling {
		t.Errorf("a poll without an answer still holds the page's polls after its time limit")
	}
	if len(out.Said) == 0 || !strings.HasPrefix(out.Said[len(out.Said)-1], "BAD: no answer from foreman") {
		t.Errorf("status after a poll without an answer: %q, want it said as an error", out.Said)
	}
}

// The page takes its spans to foreman's times on foreman's clock (GET /queue's now): in
// a browser whose clock is 10 minutes ahead, an ETA 40 s away is "in 40s", not passed,
// and a job that started a minute ago has run for 1m00s, not 11m00s.
func TestStatusPageTakesSpansOnForemansClock(t *testing.T) {
	t.Parallel()
	got := runScript(t, `
const foreman = Date.parse("2026-12-01T10:00:00Z");
Date.now = () => foreman + 10 * 60 * 1000;
noteForemanNow({ now: "2026-12-01T10:00:00Z" });
console.log(fmtEta("2026-12-01T10:00:40Z").split(" (")[0] + "|" + fmtDur(nowMs() - Date.parse("2026-12-01T09:59:00Z")));
`)
	if got != "in 40s|1m00s" {
		t.Fatalf("ETA and elapsed %q, want %q", got, "in 40s|1m00s")
	}
}

// The charts' scales are labeled at 0, the middle and the top: each label must say the
// value where it is drawn. A depth scale topped at 3 labeled its middle (1.5) "2", and the
// wait scale of a 1 s wait, topped at 1.1 s, said "1s" at its top and "550ms" midway.
func TestStatusPageChartLabelsSayTheirValues(t *testing.T) {
	t.Parallel()
	got := runScript(t, `
const labels = [];
svg = (tag, attrs, text) => {
  if (tag === "text" && attrs.x === PAD.l - 4) labels.at(-1).push(String(text));
  return { appendChild() {} };
};
for (const n of [1, 2, 3, 5, 7, 12]) {
  labels.push(["depth", n]);
  history.depth.length = 0;
  history.depth.push({ t: Date.now(), byModel: { "tiny-a:latest": n } });
  drawDepth();
}
for (const ms of [0, 10, 999, 1000, 1100, 2500, 4000, 45000, 95000, 700000, 3600000, 86400000, 3e8]) {
  labels.push(["wait", ms]);
  history.waits.length = 0;
  history.waits.push({ t: Date.now(), ms, model: "tiny-a:latest" });
  drawWaits();
}
console.log(JSON.stringify(labels));`)
	var charts [][]any
	if err := json.Unmarshal([]byte(got), &charts); err != nil {
		t.Fatalf("probe printed %q: %v", got, err)
	}
	value := func(kind, label string) float64 {
		if kind == "depth" {
			var n float64
			if _, err := fmt.Sscan(label, &n); err != nil {
				t.Fatalf("depth label %q: %v", label, err)
			}
			return n
		}
		d, err := time.ParseDuration(label)
		if err != nil {
			t.Fatalf("wait label %q: %v", label, err)
		}
		return float64(d.Milliseconds())
	}
	for _, c := range charts {
		kind, data := c[0].(string), c[1].(float64)
		if len(c) != 5 {
			t.Errorf("%s chart of %v: labels %v, want three", kind, data, c[2:])
			continue
		}
		zero, mid, top := value(kind, c[2].(string)), value(kind, c[3].(string)), value(kind, c[4].(string))
		if zero != 0 || mid != top/2 || top < data {
			t.Errorf("%s chart of %v: labels %v, want 0, half the top, and a top at or over the data", kind, data, c[2:])
		}
	}
}

// TestClipKeepsCharactersWhole: an error cut for its cell keeps whole characters: an
// emoji across the cut (two UTF-16 units, or several code points with a skin tone or a
// flag) is kept or left out whole. String.slice cut between its units and left a lone
// surrogate, drawn as a replacement box.
func TestClipKeepsCharactersWhole(t *testing.T) {
	t.Parallel()
	got := runScript(t, `
const a199 = "a".repeat(199);
console.log(JSON.stringify([
  clip(a199 + "😀x", 200),
  clip(a199 + "x😀", 200),
  clip(a199 + "👍🏽👍🏽", 200),
  clip(a199 + "🇫🇷🇩🇪", 200),
  clip("é".normalize("NFD").repeat(150), 100),
  clip("short", 200),
]));
`)
	var clipped []string
	if err := json.Unmarshal([]byte(got), &clipped); err != nil {
		t.Fatalf("probe printed %q: %v", got, err)
	}
	a199 := strings.Repeat("a", 199)
	want := []string{
		a199 + "😀…",
		a199 + "x…",
		a199 + "👍🏽…",
		a199 + "🇫🇷…",
		strings.Repeat("e\u0301", 100) + "…",
		"short",
	}
	for i := range want {
		if i >= len(clipped) || clipped[i] != want[i] {
			t.Errorf("clip %d = %q, want %q", i, clipped[min(i, len(clipped)-1)], want[i])
		}
	}
}

// A pause that a restart ends says what comes first, as foreman queue and top say it: on
// a data directory gone read-only (its error names the read-only file system) the disk's
// repair, not room (ADR-0139); on a full disk, room.
func TestStatusPageRestartAdviceNamesAReadOnlyDisk(t *testing.T) {
	t.Parallel()
	ro := `JetStream stream 'FOREMAN > FOREMAN_QUEUE' write error: open /data/jetstream/x: read-only file system`
	full := `JetStream stream 'FOREMAN > FOREMAN_QUEUE' write error: write /data/jetstream/x: no space left on device`
	got := runScript(t, fmt.Sprintf(`console.log(restartAdvice({restart_needed: true, error: %q}));
console.log(restartAdvice({restart_needed: true, error: %q}));`, ro, full))
	lines := strings.Split(got, "\n")
	if len(lines) != 2 {
		t.Fatalf("probe printed %q", got)
	}
	if !strings.Contains(lines[0], "read-only") || strings.Contains(lines[0], "room") {
		t.Errorf("advice for a read-only data directory: %q, want the disk fixed, not room", lines[0])
	}
	if !strings.Contains(lines[1], "room") {
		t.Errorf("advice for a full disk: %q, want room", lines[1])
	}
}
