package broker_test

import (
	"testing"

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
