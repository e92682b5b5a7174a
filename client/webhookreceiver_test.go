package client_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook/signature"
)

// Submit's receiver takes only foreman's signed state events: a delivery without a
// valid signature is 401, a signed body that names no job 400, one of a state this
// client does not know (a later foreman's) 204, and none ends the wait, which ends on
// the job's own done event.
func TestWebhookReceiverRefusesWhatIsNoSignedStateEvent(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{WebhookSecret: testSecret})
	c := newClient(t, f.URL, client.WithWebhookSecret(testSecret), client.WithPollInterval(never))
	release := f.Fake.Hold("tiny-a")
	t.Cleanup(release)
	hooks := make(chan string, 1)
	client.SetOnWebhookListen(c, func(u string) { hooks <- u })
	ctx := testCtx(t)
	type outcome struct {
		res *client.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := c.Submit(ctx, chatJob("tiny-a", "hooked"))
		done <- outcome{res, err}
	}()
	var hook string
	select {
	case hook = <-hooks:
	case <-ctx.Done():
		t.Fatal("Submit started no webhook receiver")
	}

	post := func(body string, signed bool) int {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, hook, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		id, now := "msg_test", time.Now()
		req.Header.Set(signature.HeaderID, id)
		req.Header.Set(signature.HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
		sig := "v1,bm9wZQ=="
		if signed {
			if sig, err = signature.Sign(testSecret, id, now, []byte(body)); err != nil {
				t.Fatal(err)
			}
		}
		req.Header.Set(signature.HeaderSignature, sig)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	done0 := `{"job_id":"01JGJ4Q2R0000000000000000A","state":"done","model":"tiny-a","attempt":1}`
	if code := post(done0, false); code != http.StatusUnauthorized {
		t.Errorf("an unsigned done event: %d, want 401", code)
	}
	if code := post(`{"state":"done","model":"tiny-a","attempt":1}`, true); code != http.StatusBadRequest {
		t.Errorf("a signed event naming no job: %d, want 400", code)
	}
	// A later foreman's state this client does not know is taken (a 4xx would be
	// delivered again for hours) and passed over: the wait goes on.
	later := `{"job_id":"01JGJ4Q2R0000000000000000A","state":"paused","model":"tiny-a","attempt":1}`
	if code := post(later, true); code != http.StatusNoContent {
		t.Errorf("a signed event of a state this client does not know: %d, want 204", code)
	}
	select {
	case o := <-done:
		t.Fatalf("Submit ended on a refused or passed-over delivery: %+v, %v", o.res, o.err)
	default:
	}

	release()
	select {
	case o := <-done:
		if o.err != nil || o.res.Job == nil || o.res.Job.State != client.StateDone || o.res.Job.ID == "01JGJ4Q2R0000000000000000A" {
			t.Fatalf("Submit = %+v, %v; want its own job done", o.res, o.err)
		}
	case <-ctx.Done():
		t.Fatal("Submit did not end after its job ran")
	}
}
