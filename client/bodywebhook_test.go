package client_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// A raw body (SubmitRequest.Body, `foreman submit --file --wait`) that names its own
// state_webhook_url is the job's one webhook, as SubmitRequest.WebhookURL is: Submit
// replaced it with its own receiver's URL (and its events with done, failed and
// canceled), and the caller's webhook never heard of the job.
func TestSubmitKeepsTheBodysOwnWebhook(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	mine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	defer mine.Close()
	c := newClient(t, f.URL, client.WithPollInterval(20*time.Millisecond))
	var receiver string
	client.SetOnWebhookListen(c, func(u string) { receiver = u })
	body, _ := json.Marshal(map[string]any{
		"model":             "tiny-a",
		"messages":          []client.Message{{Role: "user", Content: "mine"}},
		"state_webhook_url": mine.URL + "/my-hook",
		"webhook_events":    []client.State{client.StateWorking, client.StateDone},
	})
	ctx := testCtx(t)
	res, err := c.Submit(ctx, client.SubmitRequest{Body: body})
	if err != nil {
		t.Fatal(err)
	}
	if res.Text() != wantReply("tiny-a:latest", "mine") {
		t.Errorf("Text() = %q", res.Text())
	}
	rec, _, err := f.Store.Get(ctx, res.Job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Webhook == nil || rec.Webhook.URL != mine.URL+"/my-hook" ||
		!slices.Equal(rec.Webhook.Events, []client.State{client.StateWorking, client.StateDone}) {
		t.Errorf("job's webhook %+v, want the body's own (%s/my-hook, working and done)", rec.Webhook, mine.URL)
	}
	if receiver != "" {
		t.Errorf("Submit started a receiver of its own (%s) for a job with a webhook", receiver)
	}
}
