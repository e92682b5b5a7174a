package gateway

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A Mac gone behind its reverse proxy, which answers every call and poll with 502, is an
// outage as a refused connection is: a chat waits for it at most SyncOutageWait and gets
// 502 saying Ollama is unreachable, /healthz and GET /queue say so, and a /jobs job
// waits the outage out instead of failing on the proxy's page, then runs once the Mac is
// back.
func TestSyncCallGivesUpOnAMacGoneBehindItsProxy(t *testing.T) {
	t.Parallel()
	opt, start := withOutageWait(t, time.Second)
	b := newTestBundle(t, opt)
	b.Fake.SetDownWith(ollamatest.ProxyError(http.StatusBadGateway))
	batch := jobsSubmit(t, b, `{"model":"tiny-a","messages":[{"role":"user","content":"whenever"}]}`)
	start()

	chat := []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"now"}],"stream":false}`)
	resp, out := b.request(t, http.MethodPost, "/api/chat", chat)
	wantError(t, resp, out, http.StatusBadGateway, "the job was canceled")
	if msg, _ := errorText(out); !strings.Contains(msg, "ollama was unreachable for") || !strings.Contains(msg, "HTTP 502") {
		t.Errorf("error %q: want it to say the target was unreachable, with the proxy's status", msg)
	}
	if h := getHealth(t, b); h.Status != "degraded" || h.Target.Reachable {
		t.Errorf("/healthz %+v: want degraded, the target unreachable", h)
	}
	if q := getQueue(t, b, ""); q.Paused == nil || q.Paused.Reason != broker.PauseTargetUnreachable || !strings.Contains(q.Paused.Error, "HTTP 502") {
		t.Errorf("GET /queue paused %+v: want %s, saying HTTP 502", q.Paused, broker.PauseTargetUnreachable)
	}
	if v := jobsGet(t, b, batch); v.State.Terminal() {
		t.Fatalf("the /jobs job during the outage: %s %q, want it waiting", v.State, v.Error)
	}

	b.Fake.SetDownWith(ollamatest.Failure{})
	waitJobState(t, b, batch, broker.StateDone)
}
