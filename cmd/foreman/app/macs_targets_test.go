package app_test

import (
	"net/http"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
)

// clockOff sets a foreman's store clock d off from the real one.
func clockOff(d time.Duration) func(*app.Config) {
	return func(c *app.Config) {
		c.Components.Store = func(s *broker.Config) { s.Now = func() time.Time { return time.Now().Add(d) } }
	}
}

// Two Macs whose clocks are two minutes off, one ahead, one behind, more than an entry's
// 90 s lifetime: each sees the other and serves its models. (The behind one was never
// seen by the others, its models 404 through them; the ahead one saw no other Mac.)
func TestSeveralMacsWithClocksOffSeeEachOther(t *testing.T) {
	_, _, fa, fb := alphaBeta(t, clockOff(2*time.Minute), clockOff(-2*time.Minute))
	for _, c := range []struct {
		via        *app.App
		path, body string
	}{
		{fa, "/api/chat", `{"model":"beta","messages":[{"role":"user","content":"hi"}],"stream":false}`},
		{fb, "/api/chat", `{"model":"alpha","messages":[{"role":"user","content":"hi"}],"stream":false}`},
		{fa, "/api/show", `{"model":"beta"}`},
		{fb, "/api/show", `{"model":"alpha"}`},
	} {
		if code, b := call(t, c.via, http.MethodPost, c.path, c.body); code != http.StatusOK {
			t.Errorf("%s %s: %d %s", c.path, c.body, code, b)
		}
	}
}
