package main

import (
	"strings"
	"testing"
)

// A command given wrongly says what is wrong in the words of what it wants, and where
// the usage is: `jobs get` without its ID said only "accepts 1 arg(s), received 0", an
// unknown command or flag nothing of --help.
func TestUsageErrorsSayWhatToDo(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"jobs", "get"}, []string{"foreman jobs get takes one job ID, got none", `"foreman jobs get --help"`}},
		{[]string{"jobs", "cancel", "a", "b"}, []string{"foreman jobs cancel takes one job ID, got 2", `"foreman jobs cancel --help"`}},
		{[]string{"jobs", "watch", "a", "b"}, []string{"foreman jobs watch takes at most one job ID, got 2", `"foreman jobs watch --help"`}},
		{[]string{"jobs", "show", "x"}, []string{`unknown command "show" for "foreman jobs"`, `"foreman jobs --help"`}},
		{[]string{"status"}, []string{`unknown command "status" for "foreman"`, `"foreman --help"`}},
		{[]string{"queue", "--bogus"}, []string{"unknown flag: --bogus", `"foreman queue --help"`}},
		{[]string{"queue", "extra"}, []string{`unknown command "extra" for "foreman queue"`, `"foreman queue --help"`}},
	} {
		r := runCLI(t, map[string]string{"FOREMAN_URL": "http://127.0.0.1:1"}, nil, nil, tc.args...)
		for _, w := range tc.want {
			if r.code != 1 || !strings.Contains(r.stderr, w) {
				t.Errorf("%v: exit %d, stderr %q; want exit 1 and %q", tc.args, r.code, r.stderr, w)
			}
		}
		if strings.Count(strings.TrimSpace(r.stderr), "\n") > 3 {
			t.Errorf("%v: stderr %q; want a short error, not the usage", tc.args, r.stderr)
		}
	}
}

// submit's --timeout bounds the submit and each read of --wait's, not the wait: its help
// said "give up when foreman has not answered within this long", which read as a bound
// on `submit --wait`'s whole wait.
func TestSubmitTimeoutHelpSaysWhatItBounds(t *testing.T) {
	t.Parallel()
	r := runCLI(t, nil, nil, nil, "submit", "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "answered the submit, or with --wait a read of the job, within this long") || !strings.Contains(r.stdout, "the job itself may wait as long as it takes") {
		t.Errorf("exit %d, help:\n%s\nwant --timeout to say it bounds the submit and each read, not --wait's wait", r.code, r.stdout)
	}
}

// Each --timeout's help says what it bounds, as the command does it: chat's bounds the
// checks made while its answer is silent, not the chat (a foreman that takes the chat and
// answers its checks is waited for: the help said "give up when foreman has not answered
// the chat ... within this long"); bench chat's bounds each chat whole, the --direct
// side's too (it said "when foreman has not answered"); bench submit counts a submit
// left unanswered as an error and goes on (it said "give up").
func TestTimeoutHelpSaysWhatItBounds(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"chat", "--help"}, "while the chat's answer is silent (its job waits in the queue), ask foreman every this long whether it still answers, and give up when it leaves such a check unanswered this long"},
		{[]string{"bench", "chat", "--help"}, "give up when a chat, on any side (foreman, --also, --direct), has not answered whole within this long"},
		{[]string{"bench", "submit", "--help"}, "count a submit foreman has not answered within this long as an error and go on"},
	} {
		r := runCLI(t, nil, nil, nil, tc.args...)
		if r.code != 0 || !strings.Contains(strings.Join(strings.Fields(r.stdout), " "), tc.want) {
			t.Errorf("%v: exit %d, help:\n%s\nwant --timeout to say %q", tc.args, r.code, r.stdout, tc.want)
		}
	}
}
