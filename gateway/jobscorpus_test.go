package gateway

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// syncServed are bodies the sync route of their kind serves, which POST /jobs accepts
// (TestJobsSubmitAcceptsWhatTheSyncRouteServes; FuzzJobsMatchSyncRoutes starts from them),
// on a target with syncServedModels.
var syncServed = []struct {
	kind broker.Kind
	body string // served by the sync route
}{
	{broker.KindChat, `{"model":"tiny-a",` + hiMessages + `}`},
	{broker.KindChat, `{"model":"tiny-a",` + hiMessages + `,"stream":false,"options":{"temperature":0},"format":"json","top_logprobs":3}`},
	{broker.KindChat, `{"model":"tiny-a",` + hiMessages + `,"stream":null,"options":null}`},
	{broker.KindChat, `{"model":"tiny-a"}`},
	{broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","stream":false,"options":{"num_ctx":64}}`},
	{broker.KindGenerate, `{"model":"tiny-a","prompt":"hi","stream":true}`},
	{broker.KindEmbed, `{"model":"tiny-embed","input":"hi"}`},
	{broker.KindEmbed, `{"model":"tiny-embed","input":["a","b"],"stream":"yes","options":{"num_ctx":64}}`},
	{broker.KindEmbeddings, `{"model":"tiny-embed","prompt":"hi"}`},
	{broker.KindOpenAIEmbeddings, `{"model":"tiny-embed","input":"hi"}`},
	{broker.KindOpenAIEmbeddings, `{"model":"tiny-embed","input":["a"],"encoding_format":"base64"}`},
	{broker.KindOpenAIChat, `{"model":"tiny-a",` + hiMessages + `}`},
	{broker.KindOpenAIChat, `{"model":"tiny-a",` + hiMessages + `,"stream":true,"top_logprobs":2,"response_format":{"type":"json_object"}}`},
	{broker.KindOpenAICompletion, `{"model":"tiny-a","prompt":"hi","logprobs":2}`},
	{broker.KindOpenAIResponses, `{"model":"tiny-a","input":"hi"}`},
	{broker.KindOpenAIResponses, `{"model":"tiny-a","instructions":"be brief","input":[{"role":"user","content":"hi"}],"stream":false}`},
	{broker.KindAnthropicMessages, `{"model":"tiny-a","max_tokens":4,` + hiMessages + `}`},
	{broker.KindAnthropicMessages, `{"model":"tiny-a","max_tokens":4,"stream":true,"system":"be brief",` + hiMessages + `}`},
	{broker.KindOpenAIImages, `{"model":"pic","prompt":"a cat","size":"16x16"}`},
	{broker.KindOpenAIImageEdits, `{"model":"pic","prompt":"a cat","image":"` + pngData + `"}`},
}

// syncServedModels are the target's models syncServed names.
func syncServedModels() []ollamatest.Model {
	return []ollamatest.Model{{Name: "tiny-a"}, {Name: "tiny-embed", Embedding: true}, {Name: "pic", Image: true}}
}

// Every body a sync route serves is a job POST /jobs accepts (202), with any of the
// members only /jobs takes (kind, priority, program, the webhook's) anywhere among the
// target's, in any order: the sync route's checks, which /jobs makes too (parseQueued),
// read the target's body without them.
func TestJobsSubmitAcceptsWhatTheSyncRouteServes(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil, withFake(ollamatest.WithModels(syncServedModels()...)))
	ctx := testCtx(t, 60*time.Second)
	for _, c := range syncServed {
		syncGot := post(t, ctx, b.URL, c.kind.Path(), []byte(c.body))
		if syncGot.Status != http.StatusOK {
			t.Errorf("%s %s: %d %s; want it served (the corpus is wrong)", c.kind.Path(), c.body, syncGot.Status, syncGot.Body)
			continue
		}
		inner := strings.TrimSuffix(c.body[1:], "}")
		for _, job := range []string{
			`{"kind":"` + string(c.kind) + `",` + inner + `}`,
			`{` + inner + `,"kind":"` + string(c.kind) + `","priority":"high","program":"alpha"}`,
			`{"program":"beta",` + inner + `,"state_webhook_url":"http://127.0.0.1:9/h","webhook_events":["done"],"kind":"` + string(c.kind) + `","priority":null}`,
		} {
			if got := post(t, ctx, b.URL, "/jobs", []byte(job)); got.Status != http.StatusAccepted {
				t.Errorf("POST /jobs %s: %d %s; want 202 (%s serves it)", job, got.Status, got.Body, c.kind.Path())
			}
		}
	}
}
