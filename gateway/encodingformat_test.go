package gateway

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// Ollama's OpenAI embeddings layer (v0.17.4 EmbeddingsMiddleware) refuses an
// encoding_format other than float or base64 (in any case) before it checks the input,
// and its handler reads the model after both: foreman refuses it first too, with
// Ollama's words, without calling the target or queueing a job (on a chat model the call
// would be queued, ADR-0053). Measured against the real Ollama.
func TestOpenAIEmbeddingsEncodingFormatFirst(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	const gin = "application/json; charset=utf-8"
	bad := `{"error":{"message":"Invalid value for 'encoding_format' = bad. Supported values: ['float', 'base64'].","type":"invalid_request_error","param":null,"code":null}}`
	for _, c := range []struct {
		body   string
		status int
		want   string
	}{
		{`{"encoding_format":"bad","input":"x"}`, 400, bad},
		{`{"encoding_format":"bad"}`, 400, bad},
		{`{"encoding_format":"bad","model":"nope","input":"x"}`, 400, bad},
		{`{"encoding_format":"bad","model":"tiny-embed","input":"x"}`, 400, bad},
		{`{"encoding_format":"bad","model":"tiny-a","input":"x"}`, 400, bad},
		{`{"encoding_format":"float","encoding_format":"bad","model":"tiny-embed","input":"x"}`, 400, bad},
		{`{"encoding_format":"bad","model":"tiny-embed","input":"x"} x`, 400, bad},
		// A value as large as the body is quoted back clipped.
		{`{"encoding_format":"` + strings.Repeat("z", 300) + `","input":"x"}`, 400, `{"error":{"message":"Invalid value for 'encoding_format' = ` +
			strings.Repeat("z", 200) + `…. Supported values: ['float', 'base64'].","type":"invalid_request_error","param":null,"code":null}}`},
		// Good ones, and none, go on to the input's and the model's checks.
		{`{"encoding_format":"FLOAT"}`, 400, `{"error":{"message":"invalid input","type":"invalid_request_error","param":null,"code":null}}`},
		{`{"encoding_format":"Base64","input":"x"}`, 400, `{"error":{"message":"model is required","type":"api_error","param":null,"code":null}}` + "\n"},
		{`{"encoding_format":"","input":"x"}`, 400, `{"error":{"message":"model is required","type":"api_error","param":null,"code":null}}` + "\n"},
		{`{"encoding_format":null,"input":"x"}`, 400, `{"error":{"message":"model is required","type":"api_error","param":null,"code":null}}` + "\n"},
	} {
		got := post(t, ctx, b.URL, "/v1/embeddings", []byte(c.body))
		if got.Status != c.status || string(got.Body) != c.want || (c.want == bad && got.CType != gin) {
			t.Errorf("%s: %d %q %q\nwant %d %q", c.body, got.Status, got.CType, got.Body, c.status, c.want)
		}
	}
	for _, call := range b.Fake.Calls() {
		if call.Method == http.MethodPost {
			t.Errorf("a refused request reached the target: %s %s", call.Path, call.Body)
		}
	}
	if n, _ := b.Broker.Store.QueueLen(ctx); n != 0 {
		t.Errorf("refused bodies queued %d jobs", n)
	}
}
