// The Node.js example: the same greeting, as an async handler.
let invocations = 0;

exports.handler = async (event, context) => {
  invocations += 1;
  const name = (event && event.name) || "world";
  console.log(`greeting ${name}`);
  return {
    message: `Hello, ${name}!`,
    invocations_on_this_instance: invocations,
    request_id: context.awsRequestId,
    node: process.version,
  };
};
