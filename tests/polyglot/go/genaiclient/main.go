// Command genaiclient is a Go client of the platform: grpc-go 1.33 with the stubs under
// generated/go, built in GOPATH mode (GO111MODULE=off).
//
//	genaiclient [-service-config FILE] TARGET API_KEY
//	genaiclient [-service-config FILE] replicas TARGET CALLS
//
// TARGET is HOST:PORT, several HOST:PORT separated by commas (every replica, through a static
// resolver) or dns:///NAME:PORT (every address the name resolves to, as for a Kubernetes
// headless Service). FILE is a gRPC service config in JSON, such as tests/polyglot/service_config.json
// (the one Python's services.common.clients builds): round_robin over the addresses, client-side
// health checks, and retries of the contract's idempotent RPCs on UNAVAILABLE. grpc-go before
// 1.40 retries only with GRPC_GO_RETRY=on in the environment.
//
// `replicas` makes CALLS GetServerInfo calls one after another and prints one line per call:
//
//	{"call":"genai.gateway.v1.GatewayService/GetServerInfo","ok":true,"version":"0.1.0"}
//
// The first form prints one JSON object per line on stdout, one per call, in the same shape
// as the Node client (tests/polyglot/node/client.ts):
//
//	{"call":"genai.gateway.v1.GatewayService/GetServerInfo","ok":true,"response":{...proto JSON}}
//	{"call":"grpc.health.v1.Health/Check","ok":true,"service":"...","status":"SERVING"}
//	{"call":"genai.prompt.v1.PromptService/GetPrompt","ok":false,"code":5,"codeName":"NotFound",...}
//	{"call":"genai.evaluation.v1.EvaluationService/GetDataset","ok":false,"code":5,"codeName":"NotFound",...}
//	{"call":"genai.gateway.v1.GatewayService/StreamComplete","ok":true,"events":["start","delta",...,"final"],"text":"...","final":{...}}
//
// Every call but GetServerInfo sends the API key as `authorization: Bearer API_KEY`.
//
// An expected error is a line with "ok":false; anything unexpected exits with status 1.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"os"
	"strconv"
	"strings"
	"time"

	commonv1 "github.com/genai-platform/genai/generated/go/genai/common/v1"
	evaluationv1 "github.com/genai-platform/genai/generated/go/genai/evaluation/v1"
	gatewayv1 "github.com/genai-platform/genai/generated/go/genai/gateway/v1"
	promptv1 "github.com/genai-platform/genai/generated/go/genai/prompt/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	_ "google.golang.org/grpc/health" // client-side health checking (healthCheckConfig)
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

const callTimeout = 10 * time.Second

func emit(line map[string]interface{}) {
	encoded, err := json.Marshal(line)
	if err != nil {
		fail("encoding output: %v", err)
	}
	fmt.Println(string(encoded))
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "genaiclient: "+format+"\n", args...)
	os.Exit(1)
}

// describeError turns a failed call into an output line, with the google.rpc.ErrorInfo
// detail decoded when the status carries one.
func describeError(call string, err error) map[string]interface{} {
	st, ok := status.FromError(err)
	if !ok {
		fail("%s: not a gRPC status error: %v", call, err)
	}
	line := map[string]interface{}{
		"call":      call,
		"ok":        false,
		"code":      int(st.Code()),
		"codeName":  st.Code().String(),
		"message":   st.Message(),
		"errorInfo": nil,
	}
	for _, detail := range st.Details() {
		if info, isInfo := detail.(*errdetails.ErrorInfo); isInfo {
			line["errorInfo"] = map[string]interface{}{
				"reason":   info.GetReason(),
				"domain":   info.GetDomain(),
				"metadata": info.GetMetadata(),
			}
		}
	}
	return line
}

// dial connects to target (HOST:PORT, HOST:PORT,HOST:PORT or dns:///NAME:PORT) with the
// service config serviceConfig (JSON; empty: gRPC's defaults, pick_first without retries).
// It returns once a connection is ready.
func dial(target string, serviceConfig string) *grpc.ClientConn {
	options := []grpc.DialOption{grpc.WithInsecure(), grpc.WithBlock()}
	if serviceConfig != "" {
		options = append(options, grpc.WithDefaultServiceConfig(serviceConfig))
	}
	if strings.Contains(target, ",") && !strings.Contains(target, ":///") {
		// grpc-go has no ipv4: address lists: a static resolver hands it every address.
		addresses := []resolver.Address{}
		for _, address := range strings.Split(target, ",") {
			addresses = append(addresses, resolver.Address{Addr: strings.TrimSpace(address)})
		}
		replicas := manual.NewBuilderWithScheme("genai-replicas")
		replicas.InitialState(resolver.State{Addresses: addresses})
		options = append(options, grpc.WithResolvers(replicas))
		target = replicas.Scheme() + ":///replicas"
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	conn, err := grpc.DialContext(ctx, target, options...)
	if err != nil {
		fail("dial %s: %v", target, err)
	}
	return conn
}

// runReplicas makes `calls` GetServerInfo calls one after another over conn, one output line
// each: with round_robin they go to every replica in turn.
func runReplicas(conn *grpc.ClientConn, calls int) {
	const call = "genai.gateway.v1.GatewayService/GetServerInfo"
	gateway := gatewayv1.NewGatewayServiceClient(conn)
	for i := 0; i < calls; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		info, err := gateway.GetServerInfo(ctx, &gatewayv1.GetServerInfoRequest{})
		cancel()
		if err != nil {
			emit(describeError(call, err))
		} else {
			emit(map[string]interface{}{"call": call, "ok": true, "version": info.GetVersion()})
		}
	}
}

func run(conn *grpc.ClientConn, apiKey string) {

	plain, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	ctx := metadata.AppendToOutgoingContext(plain, "authorization", "Bearer "+apiKey)

	gateway := gatewayv1.NewGatewayServiceClient(conn)
	info, err := gateway.GetServerInfo(plain, &gatewayv1.GetServerInfoRequest{})
	if err != nil {
		fail("GetServerInfo: %v", err)
	}
	infoJSON, err := protojson.Marshal(info)
	if err != nil {
		fail("GetServerInfo response to JSON: %v", err)
	}
	emit(map[string]interface{}{
		"call":     "genai.gateway.v1.GatewayService/GetServerInfo",
		"ok":       true,
		"response": json.RawMessage(infoJSON),
	})

	// The overall server ("") and every hosted service, as a load balancer would check them.
	health := grpc_health_v1.NewHealthClient(conn)
	for _, service := range append([]string{""}, info.GetHostedServices()...) {
		checked, err := health.Check(ctx, &grpc_health_v1.HealthCheckRequest{Service: service})
		if err != nil {
			fail("Health/Check %q: %v", service, err)
		}
		emit(map[string]interface{}{
			"call":    "grpc.health.v1.Health/Check",
			"ok":      true,
			"service": service,
			"status":  checked.GetStatus().String(),
		})
	}

	const promptCall = "genai.prompt.v1.PromptService/GetPrompt"
	prompt, err := promptv1.NewPromptServiceClient(conn).GetPrompt(ctx, &promptv1.GetPromptRequest{Name: "x"})
	if err != nil {
		emit(describeError(promptCall, err))
	} else {
		emit(map[string]interface{}{"call": promptCall, "ok": true, "response": prompt.GetPrompt().GetName()})
	}

	const datasetCall = "genai.evaluation.v1.EvaluationService/GetDataset"
	dataset, err := evaluationv1.NewEvaluationServiceClient(conn).GetDataset(ctx, &evaluationv1.GetDatasetRequest{Name: "x"})
	if err != nil {
		emit(describeError(datasetCall, err))
	} else {
		emit(map[string]interface{}{"call": datasetCall, "ok": true, "response": dataset.GetDataset().GetName()})
	}

	// A streamed completion of the sample `chat` prompt, pinned to the zero-compute model.
	const streamCall = "genai.gateway.v1.GatewayService/StreamComplete"
	variables, err := structpb.NewStruct(map[string]interface{}{"message": "hello from Go"})
	if err != nil {
		fail("variables: %v", err)
	}
	maxTokens := int32(4)
	stream, err := gateway.StreamComplete(ctx, &gatewayv1.StreamCompleteRequest{
		Prompt:     "chat",
		Variables:  variables,
		Routing:    &commonv1.RoutingPreferences{Model: "zero"},
		Parameters: &commonv1.SamplingParameters{MaxTokens: &maxTokens},
	})
	if err != nil {
		fail("%s: %v", streamCall, err)
	}
	events := []string{}
	text := ""
	var final json.RawMessage
	for {
		message, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			fail("%s: %v", streamCall, err)
		}
		switch event := message.GetEvent().(type) {
		case *gatewayv1.StreamCompleteResponse_Start:
			events = append(events, "start")
		case *gatewayv1.StreamCompleteResponse_Delta:
			events = append(events, "delta")
			text += event.Delta.GetText()
		case *gatewayv1.StreamCompleteResponse_Final:
			events = append(events, "final")
			final, err = protojson.Marshal(event.Final)
			if err != nil {
				fail("final to JSON: %v", err)
			}
		}
	}
	emit(map[string]interface{}{"call": streamCall, "ok": true, "events": events, "text": text, "final": final})
}

func main() {
	serviceConfigFile := flag.String("service-config", "", "gRPC service config (JSON file)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: genaiclient [-service-config FILE] TARGET API_KEY")
		fmt.Fprintln(os.Stderr, "       genaiclient [-service-config FILE] replicas TARGET CALLS")
	}
	flag.Parse()
	serviceConfig := ""
	if *serviceConfigFile != "" {
		read, err := ioutil.ReadFile(*serviceConfigFile)
		if err != nil {
			fail("service config: %v", err)
		}
		serviceConfig = string(read)
		if os.Getenv("GRPC_GO_RETRY") != "on" {
			fmt.Fprintln(os.Stderr, "genaiclient: grpc-go before 1.40 retries only with GRPC_GO_RETRY=on")
		}
	}
	args := flag.Args()
	switch {
	case len(args) == 3 && args[0] == "replicas":
		calls, err := strconv.Atoi(args[2])
		if err != nil || calls < 1 {
			flag.Usage()
			os.Exit(2)
		}
		conn := dial(args[1], serviceConfig)
		defer conn.Close()
		runReplicas(conn, calls)
	case len(args) == 2:
		conn := dial(args[0], serviceConfig)
		defer conn.Close()
		run(conn, args[1])
	default:
		flag.Usage()
		os.Exit(2)
	}
}
