package gateway

import (
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
)

// A request's options pick the runner Ollama 0.17.4 would load for it: each row names the
// options of a plain request that loads the same runner ("" for the default one).
func TestRequestLoadOptions(t *testing.T) {
	t.Parallel()
	same := func(opts string) string {
		if opts == "" {
			return broker.DefaultLoadOptions
		}
		return broker.LoadOptionsToken([]byte(`{"options":` + opts + `}`))
	}
	tests := []struct {
		kind      broker.Kind
		options   string // the request's "options" member
		sameAs    string // options of a plain request on the same runner
		different bool   // the runner is not the default one
	}{
		{broker.KindChat, `{"num_ctx":0}`, `{"num_ctx":4}`, true},
		{broker.KindChat, `{"num_ctx":2.9}`, `{"num_ctx":4}`, true},
		{broker.KindGenerate, `{"num_ctx":2048.5,"temperature":1}`, `{"num_ctx":2048}`, true},
		{broker.KindGenerate, `{"num_batch":512,"main_gpu":0,"num_thread":0,"num_gpu":-1}`, "", false},
		{broker.KindEmbed, `{"use_mmap":false}`, `{"use_mmap":false}`, true},
		{broker.KindOpenAIChat, `{"num_ctx":256}`, "", false},
		{broker.KindOpenAICompletion, `{"num_ctx":256}`, "", false},
	}
	for _, tt := range tests {
		body := []byte(`{"model":"m","messages":[{"role":"user","content":"x"}],"options":` + tt.options + `}`)
		want := same(tt.sameAs)
		if (want != broker.DefaultLoadOptions) != tt.different {
			t.Fatalf("%s %s: expected runner %q", tt.kind, tt.options, want)
		}
		in, err := parseInference(tt.kind, body)
		if err != nil {
			t.Fatal(err)
		}
		if in.opts != want {
			t.Errorf("%s %s: load options %q, want %q (as %s)", tt.kind, tt.options, in.opts, want, tt.sameAs)
		}
		sub, err := parseSubmission([]byte(`{"kind":"`+string(tt.kind)+`",`+string(body[1:])), &webhook.Policy{})
		if err != nil {
			t.Fatal(err)
		}
		if sub.inf.opts != want {
			t.Errorf("POST /jobs %s %s: load options %q, want %q (as %s)", tt.kind, tt.options, sub.inf.opts, want, tt.sameAs)
		}
	}
}
