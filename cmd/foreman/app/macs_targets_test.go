package app_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
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

// Two foremen given the same FOREMAN_TARGET_NAME overwrite each other's entry: each
// says so on /healthz (degraded, naming the other), where nothing told of it before.
func TestSeveralMacsSharingATargetNameSayWhy(t *testing.T) {
	macA := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "alpha:latest"}))
	macB := ollamatest.New(t, ollamatest.WithModels(ollamatest.Model{Name: "beta:latest"}))
	nurl := sharedNATS(t)
	fa := startForeman(t, nurl, "studio", macA.URL)
	fb := startForeman(t, nurl, "studio", macB.URL)
	for _, c := range []struct {
		self, other *app.App
		otherURL    string
	}{{fa, fb, macB.URL}, {fb, fa, macA.URL}} {
		var h struct {
			Status   string `json:"status"`
			Conflict string `json:"target_name_conflict"`
		}
		eventually(t, 15*time.Second, "/healthz tells of the other foreman named studio", func() bool {
			_, b := call(t, c.self, http.MethodGet, "/healthz", "")
			h.Conflict = ""
			_ = json.Unmarshal(b, &h)
			return h.Conflict != ""
		})
		if h.Status != "degraded" || !strings.Contains(h.Conflict, c.other.BootID()) || !strings.Contains(h.Conflict, c.otherURL) ||
			!strings.Contains(h.Conflict, "FOREMAN_TARGET_NAME") {
			t.Errorf("/healthz: status %s, target_name_conflict %q; want degraded, naming the other's boot id and URL %s and the setting",
				h.Status, h.Conflict, c.otherURL)
		}
	}
}
