/**
 * Corral's in-sandbox Node.js runtime: loads `_HANDLER` and serves invokes (no npm dependencies).
 *
 * Started by the host as `node <runtime_dir>/node_bootstrap.js`. It behaves like the Node.js
 * runtime interface client aws-lambda-ric 3.x (handler resolution for CommonJS and ES modules,
 * async / callback / context.done|succeed|fail handlers, callbackWaitsForEmptyEventLoop, the
 * context object, error bodies, console patching) but talks to the host over one of two
 * transports with the same four operations (next, respond, error, initError):
 *
 *  - CORRAL_CONTROL_FD=<n>: the framed control protocol (see framing.py; same wire format) over
 *    an inherited AF_UNIX stream socket (blocking fd). The first next() sends {"type":"ready"}.
 *  - AWS_LAMBDA_RUNTIME_API=host:port: the HTTP Runtime API 2018-06-01 over a keep-alive agent.
 *
 * callbackWaitsForEmptyEventLoop works like the real client: while a handler runs the bootstrap
 * keeps nothing alive in the event loop (no read is outstanding on the control fd, and a
 * keep-alive agent unrefs its idle socket), so 'beforeExit' fires exactly when the function's
 * own pending work has drained.
 */

'use strict';

const fs = require('fs');
const path = require('path');
const util = require('util');

// ------------------------------------------------------------------------------ errors

function _isError(obj) {
  return (
    obj &&
    obj.name &&
    obj.message &&
    obj.stack &&
    typeof obj.name === 'string' &&
    typeof obj.message === 'string' &&
    typeof obj.stack === 'string'
  );
}

function intoError(err) {
  return err instanceof Error ? err : new Error(err);
}

/** The body posted for an error: {errorType, errorMessage, trace}. */
function toRapidResponse(error) {
  try {
    if (util.types.isNativeError(error) || _isError(error)) {
      return {
        errorType: error.name,
        errorMessage: error.message,
        trace: error.stack.split('\n'),
      };
    }
    return {
      errorType: typeof error,
      errorMessage: error.toString(),
      trace: [],
    };
  } catch (_err) {
    return {
      errorType: 'handled',
      errorMessage:
        'callback called with Error argument, but there was a problem while retrieving one or more of its message, name, and stack',
    };
  }
}

function _withEnumerableProperties(error) {
  if (error instanceof Error) {
    const ret = Object.assign(
      { errorType: error.name, errorMessage: error.message, code: error.code },
      error,
    );
    if (typeof error.stack === 'string') {
      ret.stack = error.stack.split('\n');
    }
    return ret;
  }
  return error;
}

/** An error as the text log shows it: a tab, then JSON. */
function toFormatted(error) {
  try {
    return '\t' + JSON.stringify(error, (_k, v) => _withEnumerableProperties(v));
  } catch (_err) {
    return '\t' + JSON.stringify(toRapidResponse(error));
  }
}

class ImportModuleError extends Error {}
class HandlerNotFound extends Error {}
class MalformedHandlerName extends Error {}
class UserCodeSyntaxError extends Error {}
class MalformedStreamingHandler extends Error {}
class UnhandledPromiseRejection extends Error {
  constructor(reason, promise) {
    super(reason);
    this.reason = reason;
    this.promise = promise;
  }
}
class NodeJsExit extends Error {
  constructor() {
    super(
      'The Lambda runtime client detected an unexpected Node.js exit code. This is most commonly caused by a Promise that was never settled. For more information, see https://nodejs.org/docs/latest/api/process.html#exit-codes',
    );
  }
}
for (const cls of [
  ImportModuleError,
  HandlerNotFound,
  MalformedHandlerName,
  UserCodeSyntaxError,
  MalformedStreamingHandler,
  UnhandledPromiseRejection,
  NodeJsExit,
]) {
  cls.prototype.name = `Runtime.${cls.name}`;
}

/** The host broke the protocol or refused a request: the runtime must exit. */
class TransportError extends Error {}

// ------------------------------------------------------------------------------ logging

const REQUEST_ID_SYMBOL = Symbol.for('aws.lambda.runtime.requestId');
const TENANT_ID_SYMBOL = Symbol.for('aws.lambda.runtime.tenantId');

function setCurrentRequestId(id) {
  global[REQUEST_ID_SYMBOL] = id;
}

function setCurrentTenantId(id) {
  global[TENANT_ID_SYMBOL] = id;
}

const structuredConsole = {};

const jsonErrorReplacer = (_, value) => {
  if (value instanceof Error) {
    return Object.assign(
      {
        errorType: value?.constructor?.name ?? 'UnknownError',
        errorMessage: value.message,
        stackTrace: typeof value.stack === 'string' ? value.stack.split('\n') : value.stack,
      },
      value,
    );
  }
  return value;
};

function formatJsonMessage(requestId, timestamp, level, ...messageParams) {
  const result = { timestamp: timestamp, level: level.name, requestId: requestId };
  const tenantId = global[TENANT_ID_SYMBOL];
  if (tenantId !== undefined && tenantId !== null) {
    result.tenantId = tenantId;
  }
  if (messageParams.length === 1) {
    result.message = messageParams[0];
    try {
      return JSON.stringify(result, jsonErrorReplacer);
    } catch (_) {
      result.message = util.format(result.message);
      return JSON.stringify(result);
    }
  }
  result.message = util.format(...messageParams);
  for (const param of messageParams) {
    if (param instanceof Error) {
      result.errorType = param?.constructor?.name ?? 'UnknownError';
      result.errorMessage = param.message;
      result.stackTrace = typeof param.stack === 'string' ? param.stack.split('\n') : [];
      break;
    }
  }
  return JSON.stringify(result);
}

function logTextToStdout(level, message, ...params) {
  const time = new Date().toISOString();
  const requestId = global[REQUEST_ID_SYMBOL];
  const line = `${time}\t${requestId}\t${level.name}\t${util.format(message, ...params)}`;
  process.stdout.write(line.replace(/\n/g, '\r') + '\n');
}

function logJsonToStdout(level, message, ...params) {
  const time = new Date().toISOString();
  const requestId = global[REQUEST_ID_SYMBOL];
  const line = formatJsonMessage(requestId, time, level, message, ...params);
  process.stdout.write(line.replace(/\n/g, '\r') + '\n');
}

/** Replace the console methods like the Lambda Node.js runtime (AWS_LAMBDA_LOG_LEVEL aware). */
function patchConsole() {
  const json = (process.env.AWS_LAMBDA_LOG_FORMAT || '').toUpperCase() === 'JSON';
  const log = json ? logJsonToStdout : logTextToStdout;
  const levels = Object.freeze({
    TRACE: { name: 'TRACE', priority: 1 },
    DEBUG: { name: 'DEBUG', priority: 2 },
    INFO: { name: 'INFO', priority: 3 },
    WARN: { name: 'WARN', priority: 4 },
    ERROR: { name: 'ERROR', priority: 5 },
    FATAL: { name: 'FATAL', priority: 6 },
  });
  const minimum = levels[(process.env.AWS_LAMBDA_LOG_LEVEL || '').toUpperCase()] ?? levels.TRACE;
  const nop = () => {};
  const method = (level) =>
    level.priority >= minimum.priority ? (msg, ...params) => log(level, msg, ...params) : nop;
  console.trace = method(levels.TRACE);
  console.debug = method(levels.DEBUG);
  console.info = method(levels.INFO);
  console.log = console.info;
  console.warn = method(levels.WARN);
  console.error = method(levels.ERROR);
  console.fatal = (msg, ...params) => log(levels.FATAL, msg, ...params);
  structuredConsole.logError = json
    ? (_msg, err) => console.error(intoError(err))
    : (msg, err) => console.error(msg, toFormatted(intoError(err)));
}

// ------------------------------------------------------------------------------ transports

/** Framed protocol (framing.py): >II header length, body length; JSON header; raw body. */
const FRAME_PREFIX = 8;
const MAX_HEADER = 64 * 1024;

function encodeFrame(header, body) {
  const head = Buffer.from(JSON.stringify(header), 'utf8');
  const payload = body === undefined || body === null ? Buffer.alloc(0) : Buffer.from(body);
  const prefix = Buffer.allocUnsafe(FRAME_PREFIX);
  prefix.writeUInt32BE(head.length, 0);
  prefix.writeUInt32BE(payload.length, 4);
  return Buffer.concat([prefix, head, payload]);
}

/**
 * The framed protocol on an inherited AF_UNIX stream socket, with plain fd reads and writes
 * (no `net` module: cheaper to load, and nothing is registered with the event loop while an
 * invoke runs). Writes are synchronous like the official client's posts; a read is only
 * outstanding while next() waits, on the libuv threadpool.
 */
class FramedTransport {
  constructor(fd) {
    this.fd = fd;
    this.readySent = false;
  }

  _writeFrame(header, body) {
    const buf = encodeFrame(header, body);
    let offset = 0;
    while (offset < buf.length) {
      try {
        offset += fs.writeSync(this.fd, buf, offset, buf.length - offset);
      } catch (err) {
        if (err.code !== 'EAGAIN') throw err; // only if the host made the socket non-blocking
      }
    }
  }

  _readInto(buf, offset, length) {
    return new Promise((resolve, reject) => {
      const attempt = () =>
        fs.read(this.fd, buf, offset, length, null, (err, bytesRead) => {
          if (!err) resolve(bytesRead);
          else if (err.code === 'EAGAIN') setTimeout(attempt, 1);
          else reject(err);
        });
      attempt();
    });
  }

  async _readExact(size) {
    const buf = Buffer.allocUnsafe(size);
    let filled = 0;
    while (filled < size) {
      const got = await this._readInto(buf, filled, size - filled);
      if (got === 0) process.exit(0); // the host closed the channel: shut down
      filled += got;
    }
    return buf;
  }

  async next() {
    if (!this.readySent) {
      this.readySent = true;
      this._writeFrame({ type: 'ready' });
    }
    for (;;) {
      const prefix = await this._readExact(FRAME_PREFIX);
      const headLen = prefix.readUInt32BE(0);
      const bodyLen = prefix.readUInt32BE(4);
      if (headLen > MAX_HEADER) throw new TransportError(`frame header too large: ${headLen}`);
      const rest = await this._readExact(headLen + bodyLen);
      let header;
      try {
        header = JSON.parse(rest.toString('utf8', 0, headLen));
      } catch (err) {
        throw new TransportError(`bad frame header: ${err.message}`);
      }
      if (header.type === 'shutdown') process.exit(0);
      if (header.type !== 'invoke') continue;
      return {
        id: header.id,
        deadlineMs: Number(header.deadline_ms) || 0,
        arn: header.arn,
        traceId: header.trace_id,
        clientContext: header.client_context,
        identity: header.cognito_identity,
        tenantId: header.tenant_id,
        body: rest.toString('utf8', headLen),
      };
    }
  }

  async respond(id, body, contentType) {
    this._writeFrame({ type: 'response', id: id, content_type: contentType }, body);
  }

  async error(id, errorResponse) {
    const body = JSON.stringify(errorResponse);
    this._writeFrame({ type: 'error', id: id, error_type: errorResponse.errorType }, body);
  }

  async initError(errorResponse) {
    const body = JSON.stringify(errorResponse);
    this._writeFrame({ type: 'init_error', error_type: errorResponse.errorType }, body);
  }
}

function headerSafe(value) {
  return String(value).replace(/[^\x20-\x7e]/g, '?');
}

class HttpTransport {
  constructor(address) {
    this.http = require('http');
    const match = /^\[?([^\]]*)\]?:(\d+)$/.exec(address);
    this.hostname = match ? match[1] : address;
    this.port = match ? parseInt(match[2], 10) : 80;
    this.agent = new this.http.Agent({ keepAlive: true, maxSockets: 1 });
    this.prefix = '/2018-06-01/runtime';
  }

  _request(method, urlPath, headers, body, retry) {
    return new Promise((resolve, reject) => {
      const options = {
        hostname: this.hostname,
        port: this.port,
        path: urlPath,
        method: method,
        headers: headers,
        agent: this.agent,
      };
      const request = this.http.request(options, (response) => {
        const chunks = [];
        response.on('data', (chunk) => chunks.push(chunk));
        response.on('end', () => resolve({ response, body: Buffer.concat(chunks) }));
        response.on('error', reject);
      });
      request.on('error', (err) => {
        if (retry && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) {
          // a stale keep-alive connection: try once more on a fresh one
          this._request(method, urlPath, headers, body, false).then(resolve, reject);
        } else {
          reject(err);
        }
      });
      request.end(body);
    });
  }

  async next() {
    const { response, body } = await this._request(
      'GET',
      `${this.prefix}/invocation/next`,
      {},
      undefined,
      true,
    );
    if (response.statusCode !== 200) {
      throw new TransportError(`Failed to get next invocation: HTTP ${response.statusCode}`);
    }
    const h = response.headers;
    const id = h['lambda-runtime-aws-request-id'];
    if (!id) throw new TransportError('Failed to get next invocation: no request id');
    return {
      id: id,
      deadlineMs: Number(h['lambda-runtime-deadline-ms']) || 0,
      arn: h['lambda-runtime-invoked-function-arn'],
      traceId: h['lambda-runtime-trace-id'],
      clientContext: h['lambda-runtime-client-context'],
      identity: h['lambda-runtime-cognito-identity'],
      tenantId: h['lambda-runtime-aws-tenant-id'],
      body: body.toString('utf8'),
    };
  }

  async _post(urlPath, body, headers) {
    const payload = Buffer.from(body);
    headers['Content-Length'] = payload.length;
    const { response, body: reply } = await this._request('POST', urlPath, headers, payload, true);
    if (response.statusCode < 200 || response.statusCode > 299) {
      // aws-lambda-ric 3.x ignores the outcome of posts; leave a trace for the operator
      process.stderr.write(
        `corral: POST ${urlPath} returned ${response.statusCode}: ${reply.toString('utf8', 0, 200)}\n`,
      );
    }
  }

  respond(id, body, contentType) {
    const url = `${this.prefix}/invocation/${encodeURIComponent(id)}/response`;
    return this._post(url, body, { 'Content-Type': contentType });
  }

  error(id, errorResponse) {
    const url = `${this.prefix}/invocation/${encodeURIComponent(id)}/error`;
    return this._post(url, JSON.stringify(errorResponse), {
      'Content-Type': 'application/json',
      'Lambda-Runtime-Function-Error-Type': headerSafe(errorResponse.errorType),
    });
  }

  initError(errorResponse) {
    return this._post(`${this.prefix}/init/error`, JSON.stringify(errorResponse), {
      'Content-Type': 'application/json',
      'Lambda-Runtime-Function-Error-Type': headerSafe(errorResponse.errorType),
    });
  }
}

function makeTransport() {
  const fd = process.env.CORRAL_CONTROL_FD;
  if (fd !== undefined) {
    delete process.env.CORRAL_CONTROL_FD;
    return new FramedTransport(parseInt(fd, 10));
  }
  const address = process.env.AWS_LAMBDA_RUNTIME_API;
  if (address) return new HttpTransport(address);
  process.stderr.write(
    'corral bootstrap: neither CORRAL_CONTROL_FD nor AWS_LAMBDA_RUNTIME_API set\n',
  );
  process.exit(1);
}

/** Post errors and responses; a failure to talk to the host is fatal. */
function fatal(err) {
  process.stderr.write(`corral: runtime channel failed: ${err && err.message}\n`);
  process.exit(1);
}

// ------------------------------------------------------------------------------ handler loading

const FUNCTION_EXPR = /^([^.]*)\.(.*)$/;
const HANDLER_STREAMING = Symbol.for('aws.lambda.runtime.handler.streaming');
const HANDLER_HIGHWATERMARK = Symbol.for('aws.lambda.runtime.handler.streaming.highWaterMark');
const STREAM_RESPONSE = 'response';

function _moduleRootAndHandler(fullHandlerString) {
  const handlerString = path.basename(fullHandlerString);
  const moduleRoot = fullHandlerString.substring(0, fullHandlerString.indexOf(handlerString));
  return [moduleRoot, handlerString];
}

function _splitHandlerString(handler) {
  const match = handler.match(FUNCTION_EXPR);
  if (!match || match.length !== 3) {
    throw new MalformedHandlerName('Bad handler');
  }
  return [match[1], match[2]];
}

function _resolveHandler(object, nestedProperty) {
  return nestedProperty.split('.').reduce((nested, key) => nested && nested[key], object);
}

async function _importFile(file) {
  const { pathToFileURL } = require('url');
  return await import(pathToFileURL(file).href);
}

async function _tryRequireFile(file, extension) {
  const p = file + (extension || '');
  if (!fs.existsSync(p)) return undefined;
  try {
    return require(p);
  } catch (err) {
    if (err && err.code === 'ERR_REQUIRE_ESM') return await _importFile(p);
    throw err;
  }
}

async function _tryAwaitImport(file, extension) {
  const p = file + (extension || '');
  return fs.existsSync(p) ? await _importFile(p) : undefined;
}

function _hasFolderPackageJsonTypeModule(folder) {
  if (folder.endsWith('/node_modules')) return false;
  const pj = path.join(folder, '/package.json');
  if (fs.existsSync(pj)) {
    try {
      const pkg = JSON.parse(fs.readFileSync(pj));
      if (pkg) return pkg.type === 'module';
    } catch (e) {
      console.warn(
        `${pj} cannot be read, it will be ignored for ES module detection purposes.`,
        e,
      );
      return false;
    }
  }
  if (folder === '/') return false;
  return _hasFolderPackageJsonTypeModule(path.resolve(folder, '..'));
}

async function _tryRequire(appRoot, moduleRoot, module) {
  const lambdaStylePath = path.resolve(appRoot, moduleRoot, module);
  const extensionless = await _tryRequireFile(lambdaStylePath);
  if (extensionless) return extensionless;

  const pjHasModule = _hasFolderPackageJsonTypeModule(path.resolve(path.dirname(lambdaStylePath)));
  if (!pjHasModule) {
    const loaded = await _tryRequireFile(lambdaStylePath, '.js');
    if (loaded) return loaded;
  }
  const loaded =
    (pjHasModule && (await _tryAwaitImport(lambdaStylePath, '.js'))) ||
    (await _tryAwaitImport(lambdaStylePath, '.mjs')) ||
    (await _tryRequireFile(lambdaStylePath, '.cjs'));
  if (loaded) return loaded;

  // Fall back to Node's own resolution (node_modules packages, directories with index.js).
  const nodeStylePath = require.resolve(module, { paths: [appRoot, moduleRoot] });
  return require(nodeStylePath);
}

async function _loadUserApp(appRoot, moduleRoot, module) {
  try {
    return await _tryRequire(appRoot, moduleRoot, module);
  } catch (e) {
    if (e instanceof SyntaxError) {
      throw new UserCodeSyntaxError(e);
    } else if (e && e.code === 'MODULE_NOT_FOUND') {
      throw new ImportModuleError(e);
    }
    throw e;
  }
}

async function loadHandler(appRoot, fullHandlerString) {
  if (fullHandlerString.includes('..')) {
    throw new MalformedHandlerName(
      `'${fullHandlerString}' is not a valid handler name. Use absolute paths when specifying root directories in handler names.`,
    );
  }
  const [moduleRoot, moduleAndHandler] = _moduleRootAndHandler(fullHandlerString);
  const [module, handlerPath] = _splitHandlerString(moduleAndHandler);
  const userApp = await _loadUserApp(appRoot, moduleRoot, module);
  const handlerFunc = _resolveHandler(userApp, handlerPath);
  if (!handlerFunc) {
    throw new HandlerNotFound(`${fullHandlerString} is undefined or not exported`);
  }
  if (typeof handlerFunc !== 'function') {
    throw new HandlerNotFound(`${fullHandlerString} is not a function`);
  }
  return handlerFunc;
}

function getHandlerMetadata(handlerFunc) {
  const mark = handlerFunc[HANDLER_STREAMING];
  let streaming = false;
  if (mark !== undefined && mark !== null && mark !== false) {
    if (mark !== STREAM_RESPONSE) {
      throw new MalformedStreamingHandler('Only response streaming is supported.');
    }
    streaming = STREAM_RESPONSE;
  }
  let isAsync = false;
  try {
    isAsync = handlerFunc.constructor && handlerFunc.constructor.name === 'AsyncFunction';
  } catch (_err) {
    isAsync = false;
  }
  const hwm = parseInt(handlerFunc[HANDLER_HIGHWATERMARK]);
  return {
    streaming,
    highWaterMark: isNaN(hwm) ? undefined : hwm,
    isAsync,
    argsNum: handlerFunc.length,
  };
}

/** HttpResponseStream.from(): JSON prelude, 8 NUL bytes, then the body (Lambda's format). */
class HttpResponseStream {
  static from(underlyingStream, prelude) {
    underlyingStream.setContentType('application/vnd.awslambda.http-integration-response');
    underlyingStream.write(JSON.stringify(prelude));
    underlyingStream.write(Buffer.alloc(8));
    return underlyingStream;
  }
}

function installGlobalAwsLambda() {
  const flag = process.env.AWS_LAMBDA_NODEJS_NO_GLOBAL_AWSLAMBDA;
  if (flag === '1' || flag === 'true') return;
  globalThis.awslambda = {
    streamifyResponse: (handler, options) => {
      handler[HANDLER_STREAMING] = STREAM_RESPONSE;
      if (typeof options?.highWaterMark === 'number') {
        handler[HANDLER_HIGHWATERMARK] = parseInt(options.highWaterMark);
      }
      return handler;
    },
    HttpResponseStream: HttpResponseStream,
  };
}

// ------------------------------------------------------------------------------ invoke loop

const BEFORE_EXIT_SYMBOL = Symbol.for('aws.lambda.beforeExit');
const NO_OP_LISTENER = () => {};
const BeforeExitListener = {
  invoke: () => global[BEFORE_EXIT_SYMBOL](),
  reset: () => (global[BEFORE_EXIT_SYMBOL] = NO_OP_LISTENER),
  set: (listener) => (global[BEFORE_EXIT_SYMBOL] = listener),
};

function serializeResponse(body) {
  let text;
  try {
    text = JSON.stringify(body === undefined ? null : body);
  } catch (_err) {
    throw new Error('Unable to stringify response body');
  }
  return text === undefined ? 'null' : text;
}

function postInvocationResponse(transport, result, id, callback) {
  const body = serializeResponse(result); // throws before anything is sent, like the RIC
  transport.respond(id, body, 'application/json').then(callback, fatal);
}

function postInvocationError(transport, error, id, callback) {
  transport.error(id, toRapidResponse(error)).then(callback, fatal);
}

/** callback, the succeed/fail/done part of the context, and markCompleted (CallbackContext.js). */
function buildCallbackContext(transport, id, scheduleNext) {
  const postError = (err, callback) => {
    structuredConsole.logError('Invoke Error', err);
    postInvocationError(transport, err, id, callback);
  };

  let isCompleteInvoked = false;
  const complete = (result, callback) => {
    if (isCompleteInvoked) {
      console.error(
        'Invocation has already been reported as done. Cannot call complete more than once per invocation.',
      );
      return;
    }
    isCompleteInvoked = true;
    postInvocationResponse(transport, result, id, callback);
  };

  let waitForEmptyEventLoop = true;

  const callback = function (err, result) {
    BeforeExitListener.reset();
    if (err !== undefined && err !== null) {
      postError(err, scheduleNext);
    } else if (!waitForEmptyEventLoop) {
      complete(result, scheduleNext);
    } else {
      BeforeExitListener.set(() => {
        setImmediate(() => complete(result, scheduleNext));
      });
    }
  };

  const done = (err, result) => {
    BeforeExitListener.reset();
    if (err !== undefined && err !== null) {
      postError(err, scheduleNext);
    } else {
      complete(result, scheduleNext);
    }
  };
  const succeed = (result) => done(null, result);
  const fail = (err) => (err === undefined || err === null ? done('handled') : done(err, null));

  const callbackContext = {
    get callbackWaitsForEmptyEventLoop() {
      return waitForEmptyEventLoop;
    },
    set callbackWaitsForEmptyEventLoop(value) {
      waitForEmptyEventLoop = value;
    },
    succeed,
    fail,
    done,
  };

  // Only the first call of callback/succeed/fail/done counts.
  let finished = false;
  const onlyFirst = (fn) =>
    function () {
      if (!finished) {
        fn.apply(null, arguments);
        finished = true;
      }
    };
  callbackContext.succeed = onlyFirst(callbackContext.succeed);
  callbackContext.fail = onlyFirst(callbackContext.fail);
  callbackContext.done = onlyFirst(callbackContext.done);
  const markCompleted = () => {
    isCompleteInvoked = true;
  };
  return [onlyFirst(callback), callbackContext, markCompleted];
}

function parseJsonValue(value, name) {
  if (value === undefined || value === null || value === '') return undefined;
  if (typeof value !== 'string') return value; // the framed protocol may carry objects
  try {
    return JSON.parse(value);
  } catch (err) {
    throw new Error(`Cannot parse ${name} as json: ${err.toString()}`);
  }
}

/** Add the environment and invoke data to the callback context (InvokeContext.js). */
function attachEnvironmentData(callbackContext, invocation) {
  if (invocation.traceId) {
    process.env._X_AMZN_TRACE_ID = invocation.traceId;
  } else {
    delete process.env._X_AMZN_TRACE_ID;
  }
  const deadline = invocation.deadlineMs;
  return Object.assign(
    callbackContext,
    {
      functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION,
      functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
      memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
      logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
      logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
    },
    {
      clientContext: parseJsonValue(invocation.clientContext, 'ClientContext'),
      identity: parseJsonValue(invocation.identity, 'CognitoIdentity'),
      invokedFunctionArn: invocation.arn,
      awsRequestId: invocation.id,
      tenantId: invocation.tenantId,
      getRemainingTimeInMillis: function () {
        return deadline - Date.now();
      },
    },
  );
}

function _isPromise(obj) {
  return obj && obj.then && typeof obj.then === 'function';
}

/** A buffered stand-in for a streaming response: collected, then sent as one response. */
function createBufferedResponseStream(highWaterMark) {
  const { Writable } = require('stream');
  const chunks = [];
  let contentType = 'application/octet-stream';
  const stream = new Writable({
    highWaterMark,
    write(chunk, _encoding, cb) {
      chunks.push(Buffer.from(chunk));
      cb();
    },
  });
  stream.setContentType = (value) => {
    contentType = value;
  };
  const finished = new Promise((resolve, reject) => {
    stream.on('finish', resolve);
    stream.on('error', reject);
  });
  return { stream, finished, body: () => Buffer.concat(chunks), contentType: () => contentType };
}

class Runtime {
  constructor(transport, handler, metadata, errorCallbacks) {
    this.transport = transport;
    this.handler = handler;
    this.metadata = metadata;
    this.errorCallbacks = errorCallbacks;
    this.handleOnce =
      metadata.streaming === STREAM_RESPONSE ? this.handleOnceStreaming : this.handleOnceNonStreaming;
  }

  scheduleIteration() {
    setImmediate(() => {
      this.handleOnce().then(
        () => {},
        (err) => {
          if (err instanceof TransportError) fatal(err);
          console.log(`Unexpected Top Level Error: ${err.toString()}`);
          this.errorCallbacks.uncaughtException(err);
        },
      );
    });
  }

  async handleOnceNonStreaming() {
    const invocation = await this.transport.next();
    setCurrentRequestId(invocation.id);
    setCurrentTenantId(invocation.tenantId);

    const [callback, callbackContext, markCompleted] = buildCallbackContext(
      this.transport,
      invocation.id,
      this.scheduleIteration.bind(this),
    );
    try {
      this._setErrorCallbacks(invocation.id);
      this._setDefaultExitListener(invocation.id, markCompleted, this.metadata.isAsync);
      const result = this.handler(
        JSON.parse(invocation.body),
        attachEnvironmentData(callbackContext, invocation),
        callback,
      );
      if (_isPromise(result)) {
        result.then(callbackContext.succeed, callbackContext.fail).catch(callbackContext.fail);
      }
    } catch (err) {
      callback(err);
    }
  }

  async handleOnceStreaming() {
    const invocation = await this.transport.next();
    setCurrentRequestId(invocation.id);
    setCurrentTenantId(invocation.tenantId);
    const id = invocation.id;
    const response = createBufferedResponseStream(this.metadata.highWaterMark);
    let reported = false;
    const scheduleNext = () => this.scheduleIteration();
    const fail = (err) => {
      if (reported) return;
      reported = true;
      structuredConsole.logError('Invoke Error', err);
      postInvocationError(this.transport, err, id, scheduleNext);
    };
    try {
      this._setErrorCallbacks(id);
      BeforeExitListener.set(() => fail(new NodeJsExit()));
      const context = attachEnvironmentData({}, invocation);
      const result = this.handler(JSON.parse(invocation.body), response.stream, context);
      if (!_isPromise(result)) {
        fail('Streaming does not support non-async handlers.');
        return;
      }
      const value = await result;
      if (typeof value !== 'undefined') console.warn('Streaming handlers ignore return values.');
      if (!response.stream.writableEnded) {
        fail('Response stream is not finished.');
        return;
      }
      await response.finished;
      BeforeExitListener.reset();
      if (reported) return;
      reported = true;
      this.transport.respond(id, response.body(), response.contentType()).then(scheduleNext, fatal);
    } catch (err) {
      BeforeExitListener.reset();
      fail(err);
    }
  }

  _setErrorCallbacks(invokeId) {
    this.errorCallbacks.uncaughtException = (error) => {
      postInvocationError(this.transport, error, invokeId, () => process.exit(129));
    };
    this.errorCallbacks.unhandledRejection = (error) => {
      postInvocationError(this.transport, error, invokeId, () => process.exit(128));
    };
  }

  /** When the loop drains and the handler never completed: null (sync) or NodeJsExit (async). */
  _setDefaultExitListener(invokeId, markCompleted, isAsync) {
    BeforeExitListener.set(() => {
      markCompleted();
      if (isAsync) {
        const nodeJsExitError = new NodeJsExit();
        structuredConsole.logError('Invoke Error', nodeJsExitError);
        postInvocationError(this.transport, nodeJsExitError, invokeId, () =>
          this.scheduleIteration(),
        );
      } else {
        postInvocationResponse(this.transport, null, invokeId, () => this.scheduleIteration());
      }
    });
  }
}

function warnOnCallbackHandler(metadata) {
  if (
    process.env.AWS_LAMBDA_NODEJS_DISABLE_CALLBACK_WARNING === undefined &&
    metadata.argsNum === 3 &&
    metadata.isAsync === false &&
    metadata.streaming === false
  ) {
    console.warn(
      'AWS Lambda plans to remove support for callback-based function handlers starting with Node.js 24. You will need to update this function to use an async handler to use Node.js 24 or later. For more information and to provide feedback on this change, see https://github.com/aws/aws-lambda-nodejs-runtime-interface-client/issues/137. To disable this warning, set the AWS_LAMBDA_NODEJS_DISABLE_CALLBACK_WARNING environment variable.',
    );
  }
}

async function main() {
  patchConsole();
  const transport = makeTransport();
  const appRoot = process.env.LAMBDA_TASK_ROOT || process.cwd();
  try {
    if (process.cwd() !== appRoot && fs.existsSync(appRoot)) process.chdir(appRoot);
  } catch (_err) {
    // keep the current directory
  }

  const errorCallbacks = {
    uncaughtException: (error) => {
      transport.initError(toRapidResponse(error)).then(() => process.exit(129), fatal);
    },
    unhandledRejection: (error) => {
      transport.initError(toRapidResponse(error)).then(() => process.exit(128), fatal);
    },
  };
  process.on('uncaughtException', (error) => {
    structuredConsole.logError('Uncaught Exception', error);
    errorCallbacks.uncaughtException(error);
  });
  process.on('unhandledRejection', (reason, promise) => {
    const error = new UnhandledPromiseRejection(reason, promise);
    structuredConsole.logError('Unhandled Promise Rejection', error);
    errorCallbacks.unhandledRejection(error);
  });
  BeforeExitListener.reset();
  process.on('beforeExit', BeforeExitListener.invoke);

  installGlobalAwsLambda();
  let handlerFunc;
  let metadata;
  try {
    handlerFunc = await loadHandler(appRoot, process.env._HANDLER || '');
    metadata = getHandlerMetadata(handlerFunc);
  } catch (err) {
    structuredConsole.logError('Uncaught Exception', err);
    try {
      await transport.initError(toRapidResponse(err));
    } catch (postErr) {
      process.stderr.write(`corral: could not report init error: ${postErr}\n`);
    }
    process.exit(1);
  }
  warnOnCallbackHandler(metadata);
  new Runtime(transport, handlerFunc, metadata, errorCallbacks).scheduleIteration();
}

main().catch(fatal);
