// Package ollamatest is a fake Ollama server for fast tests and benchmarks.
//
// It serves the routes foreman uses (/, /api/version, tags, ps, show, chat,
// generate, embed, embeddings, model management, blobs, the OpenAI-compatible
// /v1 routes, the OpenAI Responses API /v1/responses, the Anthropic Messages
// API /v1/messages, OpenAI's image routes and the model aliases of
// /api/experimental/aliases) with Ollama's JSON shapes and SSE events, deterministic
// replies (Reply, Vector) and a fixed clock, so a relayed response can be
// compared byte for byte. /v1/responses and /v1/messages reply to the chat they
// stand for (the request's messages as /api/chat reads them), so they give the
// reply /api/chat gives that chat; their ids are hashed, not random.
//
// It models what matters to a scheduler: one chat model loaded at a time
// (a request for another swaps it, sleeping LoadDelay and counting Loads),
// an honest /api/ps, a chat or generate with keep_alive 0 unloading its model once it
// ends (an empty one only unloads, as Ollama's does), per-token delays, and a
// concurrency counter. Tests steer
// it with injected failures (FailNext, SetDown, SetDownWith), Hold to keep a "long job"
// running, and WaitStarted/WaitFor to wait for calls without sleeping.
//
//	func TestWorker(t *testing.T) {
//		fake := ollamatest.New(t, ollamatest.WithTokens(3))
//		release := fake.Hold("tiny-a")           // chat on tiny-a blocks...
//		go runJob(fake.URL, "tiny-a")            // ...code under test
//		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
//		defer cancel()
//		if err := fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
//			t.Fatal(err)
//		}
//		fake.FailNext(1, ollamatest.DropMidStream) // the next call fails mid-stream
//		release()
//		// ... assert on fake.Loads(), fake.MaxInFlight(), fake.Calls()
//	}
//
// Models default to tiny-a:latest and tiny-b:latest (chat) and
// tiny-embed:latest (embedding only; chat or generate on it answers 400); a Model
// with Image set is an image generation model (its generate answers steps and a
// picture, as Ollama's does). Chat and generate routes resolve SetAlias's aliases
// as Ollama does (ollama.ResolveAlias).
// Embedding requests never swap the loaded chat model.
package ollamatest
