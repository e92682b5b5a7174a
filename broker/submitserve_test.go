package broker_test

import (
	"slices"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

func TestInboxReply(t *testing.T) {
	for reply, want := range map[string]bool{
		"_INBOX.abc":                        true,
		"_INBOX.abc.def":                    true,
		"_R_.aBc123.XyZ":                    true,
		"_INBOX.":                           false,
		"_INBOX":                            false,
		"_INBOX.a..b":                       false,
		"_INBOX.*":                          false,
		"_INBOX.>":                          false,
		"_INBOX.a b":                        false,
		"_R_.":                              false,
		"$KV.FOREMAN_JOBS.job.01":           false,
		"foreman.queue.abc":                 false,
		"_inbox.abc":                        false,
		"_GR_.abcdef.ghijkl._INBOX.x":       true,
		"_GR_.abcdef.ghijkl._R_.aBc123.XyZ": true,
		"_GR_.abcdef.ghijkl.$KV.FOREMAN_JOBS.job": false,
		"_GR_.abc.ghijkl._INBOX.x":                false,
		"_GR_.abcdef.ghijkl":                      false,
	} {
		if got := broker.InboxReply(reply); got != want {
			t.Errorf("inboxReply(%q) = %v, want %v", reply, got, want)
		}
	}
}

// Refused submits are logged once per interval, the next line telling how many were held
// back: any client can send a flood of them.
func TestRefusalLogLimit(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	got := broker.LogLimitAllow(10*time.Second, t0, t0.Add(time.Second), t0.Add(9*time.Second), t0.Add(10*time.Second), t0.Add(11*time.Second), t0.Add(30*time.Second))
	want := []int{0, -1, -1, 2, -1, 1}
	if !slices.Equal(got, want) {
		t.Fatalf("allow = %v, want %v", got, want)
	}
}
