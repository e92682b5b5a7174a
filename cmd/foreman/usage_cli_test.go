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
