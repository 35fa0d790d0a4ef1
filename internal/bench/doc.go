// Package bench is the engine of the chatbench load generator: protocol
// connections, scenarios, a log-linear latency histogram, /proc sampling
// of the server, and the SVG percentile chart.
//
// The generator runs on the same machine as the server it measures, so its
// hot paths avoid work the server would otherwise be measured under: lines
// are scanned in place rather than decoded with encoding/json, requests
// are appended into reused buffers, and each connection's reader records
// latencies into its own histogram, merged only at the end.
package bench
