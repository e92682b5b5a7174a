// Package ollama speaks to the one Ollama server foreman sits in front of (the
// "target"). It owns four things:
//
//   - the Ollama wire types, matching Ollama v0.17's api/types.go JSON exactly;
//     polymorphic or pass-through fields are json.RawMessage so a relay never
//     loses or rewrites what a client sent;
//   - the target Client, whose failures are typed: *ConnectionError means the
//     target could not be reached or dropped the connection (retryable), and
//     *HTTPError means the target answered with a non-2xx status (terminal, but
//     for a proxy's 502 or 504, which says the target is not there: UpstreamDown);
//   - the Inventory, a poller of /api/tags and /api/ps that keeps the last
//     known model lists and reports when the target is degraded;
//   - Ollama's rules the rest of foreman follows: NormalizeModel (how model names
//     fold, which the broker's per-model queues key on) and FramingOf (whether an
//     answer of a Content-Type streams as NDJSON, as SSE or is one body).
//
// The package imports only the standard library.
package ollama
