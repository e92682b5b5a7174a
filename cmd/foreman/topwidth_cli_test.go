package main

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestFitWidthCountsColumns: a line is cut to the columns a terminal gives it, not to its
// characters: a Han character or an emoji takes two, a combining mark none.
func TestFitWidthCountsColumns(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in    string
		width int
		want  string
	}{
		{"模型加载失败", 12, "模型加载失败"},
		{"模型加载失败", 11, "模型加载失…"},
		{"模型加载失败", 7, "模型加…"},
		{"ok 🙂🙂", 7, "ok 🙂🙂"},
		{"ok 🙂🙂", 6, "ok 🙂…"},
		{"ok 🙂🙂", 5, "ok …"},
		{"ｆｕｌｌ", 5, "ｆｕ…"},
		{"e\u0301e\u0301e\u0301", 3, "e\u0301e\u0301e\u0301"},
		{"e\u0301e\u0301e\u0301", 2, "e\u0301…"},
		{"plain ascii", 8, "plain a…"},
	} {
		if got := fitWidth(tc.in, tc.width); got != tc.want {
			t.Errorf("fitWidth(%q, %d) = %q, want %q", tc.in, tc.width, got, tc.want)
		}
	}
}

// tmuxTop runs `foreman top` against url in a detached tmux pane of width × height and
// returns a function that reads the pane: its rows, and its lines with those the
// terminal wrapped joined again (capture-pane -J).
func tmuxTop(t *testing.T, url string, width, height int) func() (rows, lines []string) {
	t.Helper()
	tmux, err := exec.LookPath("tmux")
	if err != nil {
		t.Skip("no tmux on PATH: the live view is not tested in a terminal (.ci/run installs tmux)")
	}
	sock := filepath.Join(t.TempDir(), "tmux.sock")
	start := exec.Command(tmux, "-u", "-S", sock, "-f", "/dev/null", "new-session", "-d",
		"-x", strconv.Itoa(width), "-y", strconv.Itoa(height),
		"-e", "FOREMAN_TEST_RUN_MAIN=1", "-e", "FOREMAN_URL="+url, "-e", "LANG=C.UTF-8",
		os.Args[0], "top", "--interval", "1h")
	if out, err := start.CombinedOutput(); err != nil {
		t.Fatalf("tmux new-session: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command(tmux, "-S", sock, "kill-server").Run() })
	read := func(args ...string) []string {
		out, err := exec.Command(tmux, append([]string{"-u", "-S", sock, "capture-pane", "-p"}, args...)...).Output()
		if err != nil {
			t.Fatalf("tmux capture-pane: %v", err)
		}
		return strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	}
	return func() (rows, lines []string) { return read(), read("-J") }
}

// TestLiveTopWideTextStaysInItsFrame: in a real terminal (tmux, 40 columns), double-width
// text in every field a server sends (a pause's error, a model, an id) and in an error
// answer leaves the live frame in place: the terminal wraps no line, the title stays on
// the first row. fitLines counted characters, so a line of Han characters took twice the
// columns it was cut to, wrapped and scrolled the frame; the error frame was not fitted
// to the width at all.
func TestLiveTopWideTextStaysInItsFrame(t *testing.T) {
	t.Parallel()
	const width, height = 40, 20
	wide := strings.Repeat("显存不足无法加载模型", 6)
	for _, tc := range []struct {
		name, url, want string
	}{
		{"snapshot", evilForemanWith(t, wide), "PAUSED"},
		{"error", foreignServer(t, http.StatusBadGateway, "<html>"+wide+"</html>"), "answered 502"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			capture := tmuxTop(t, tc.url, width, height)
			var rows, lines []string
			waitFor(t, "the frame", func() bool {
				rows, lines = capture()
				// A frame of the answer, not the one that waits for it.
				shown := strings.Join(rows, "\n")
				return strings.Contains(shown, "(q quits)") && !strings.Contains(shown, "waiting for the first answer")
			})
			shown := strings.Join(rows, "\n")
			if !strings.HasPrefix(rows[0], "foreman http://") {
				t.Fatalf("the frame scrolled: the title is not on the first row:\n%s", shown)
			}
			if !strings.Contains(shown, tc.want) || !strings.Contains(shown, "显存") {
				t.Fatalf("no %q and wide text in the frame:\n%s", tc.want, shown)
			}
			if len(lines) != len(rows) {
				t.Fatalf("the terminal wrapped lines: %d rows hold %d lines:\n%s", len(rows), len(lines), shown)
			}
		})
	}
}
