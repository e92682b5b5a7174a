package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// fuzzQueryRoutes are foreman's own routes that read a path value or a query: the job
// views, cancel, artifacts, deliveries, the queue, and /healthz.
var fuzzQueryRoutes = []struct{ method, prefix string }{
	{http.MethodGet, "/jobs?"}, {http.MethodGet, "/jobs/"}, {http.MethodDelete, "/jobs/"},
	{http.MethodGet, "/queue?"}, {http.MethodGet, "/healthz?"}, {http.MethodPost, "/jobs/"},
}

// FuzzHTTPQuery asks foreman's own read routes with a fuzzed rest of the target (a query,
// or a job id and what follows it: artifacts/{name}, deliveries, deliveries/redeliver), on
// the shared fuzz bundle with a job of each kind of answer stored. Whatever it is, the
// answer comes, is no 5xx but 503, and a non-2xx that is not a redirect or the router's
// own text answer is JSON with an "error" member.
// Run with: go test -run '^$' -fuzz '^FuzzHTTPQuery$' -fuzztime 30s ./gateway
func FuzzHTTPQuery(f *testing.F) {
	f.Add(uint8(0), "limit=2&state=done,failed&model=tiny-a&program=x&cursor=abc")
	f.Add(uint8(0), "limit=-1&state=bogus")
	f.Add(uint8(0), "limit=99999999999999999999&cursor=%ff%fe")
	f.Add(uint8(0), "cursor=MDFKR0o0UTJSMDAwMDAwMDAwMDAwMDAwMEE")
	f.Add(uint8(1), "$0")
	f.Add(uint8(1), "$0/artifacts/result.json")
	f.Add(uint8(1), "$0/deliveries?limit=1")
	f.Add(uint8(1), "..%2f..%2fetc/artifacts/%2e%2e")
	f.Add(uint8(2), "$1")
	f.Add(uint8(3), "limit=5&model=tiny-a")
	f.Add(uint8(4), "verbose=1")
	f.Add(uint8(5), "$0/deliveries/redeliver")
	b, lookups := fuzzBundle(f)
	// Jobs to find: "$0" and "$1" in the fuzzed rest stand for their ids.
	var ids []string
	for _, body := range []string{
		`{"kind":"generate","model":"tiny-a","prompt":"x","state_webhook_url":"https://hooks.example/h"}`,
		`{"kind":"embed","model":"tiny-embed","input":"x"}`,
	} {
		req := httptest.NewRequest(http.MethodPost, "/jobs", strings.NewReader(body))
		w := httptest.NewRecorder()
		b.GW.ServeHTTP(w, req)
		var s submitted
		if w.Code != http.StatusAccepted || json.Unmarshal(w.Body.Bytes(), &s) != nil {
			f.Fatalf("POST /jobs %s: %d %s", body, w.Code, w.Body)
		}
		ids = append(ids, s.JobID)
	}
	f.Fuzz(func(t *testing.T, route uint8, rest string) {
		rt := fuzzQueryRoutes[int(route)%len(fuzzQueryRoutes)]
		target := strings.NewReplacer("$0", ids[0], "$1", ids[1]).Replace(rt.prefix + rest)
		if _, err := url.ParseRequestURI(target); err != nil || strings.ContainsAny(target, " \t\r\n#") {
			return // no request line carries it
		}
		ctx, cancel := context.WithTimeout(context.Background(), answerDeadline)
		defer cancel()
		req := httptest.NewRequestWithContext(ctx, rt.method, target, nil)
		w := httptest.NewRecorder()
		b.GW.ServeHTTP(w, req)
		if ctx.Err() != nil {
			t.Fatalf("%s %s: no answer within %s", rt.method, target, answerDeadline)
		}
		status, out := w.Code, w.Body.Bytes()
		if status >= 500 && status != http.StatusServiceUnavailable {
			t.Fatalf("%s %s: %d %s", rt.method, target, status, out)
		}
		if status/100 == 4 && strings.HasPrefix(w.Header().Get("Content-Type"), "application/json") {
			wantErrorBody(t, strings.SplitN(target, "?", 2)[0], status, out)
		}
		if n := lookups.Load(); n != 0 {
			t.Fatalf("the webhook policy resolved %d names", n)
		}
	})
}
