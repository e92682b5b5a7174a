package gateway

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// One program cannot hold the whole budget of bodies in flight (ADR-0126): a program
// that opens body after body and stalls each just short of its end holds at most half of
// the budget; its bodies past that are refused with 503 naming it, while another
// program's body, which the budget it left would not have held, is served.
func TestBodyBudgetLeavesOtherProgramsRoom(t *testing.T) {
	t.Parallel()
	const budget = 4 << 20
	const size = 1 << 20
	b := newBudgetBundle(t, size, budget, nil)
	ctx := testCtx(t, 60*time.Second)
	refusals := func() float64 {
		return metricValue(scrape(t, b.testBundle), "foreman_requests_refused_total", "reason", "body_budget")
	}

	var held, refused int
	var finishes []func()
	var dones []<-chan rawResponse
	for i := range budget / size {
		finish, done := stalledPost(t, ctx, b.testBundle, "/jobs", chatOf(t, size), size-10, true, HeaderProgram, "alpha")
		finish = sync.OnceFunc(finish)
		t.Cleanup(finish)
		finishes, dones = append(finishes, finish), append(dones, done)
		// A refused body's answer comes once its rest is read out: the refusal is
		// seen in the count.
		eventually(t, 30*time.Second, fmt.Sprintf("alpha's body %d held whole or refused", i), func() bool {
			if n, _ := bodyGauges(t, b.testBundle); n >= float64((held+1)*size) {
				held++
				return true
			}
			if refusals() > float64(refused) {
				refused++
				return true
			}
			return false
		})
	}
	if held*size > budget/2 {
		t.Errorf("alpha, stalling its bodies, holds %d of them (%d refused); want at most half the budget", held, refused)
	}

	resp, out := b.request(t, http.MethodPost, "/api/chat", chatOf(t, size), HeaderProgram, "beta")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("beta's body while alpha stalls its own: %d %s; want it served", resp.StatusCode, out)
	}

	var accepted int
	for i, finish := range finishes {
		finish()
		switch r := <-dones[i]; {
		case r.Status == http.StatusAccepted:
			accepted++
		case r.Status != http.StatusServiceUnavailable || !strings.Contains(string(r.Body), "too many request bodies in flight") ||
			!strings.Contains(string(r.Body), `program \"alpha\"`) || r.Header.Get("Retry-After") == "":
			t.Errorf("alpha's body %d: %d %s; want 202, or a 503 naming its program's share", i, r.Status, r.Body)
		}
	}
	if accepted != held || held == 0 {
		t.Errorf("alpha: %d bodies accepted, %d were held whole; want the same, at least one", accepted, held)
	}
}
