/* GQ_LSTM inside the GQ delegate (internal to the delegate library).
 *
 * gq_delegate.c claims CUSTOM nodes named GQ_LSTM_OP_NAME and gives each one
 * a delegate kernel made of the four functions below; gq_lstm.c holds the op
 * (its contract is the comment at the top of gq_lstm.c and docs/EXPORT.md).
 * Pure C11. */
#ifndef GQ_LSTM_H_
#define GQ_LSTM_H_

#include <stddef.h>

#include "../kernels/gq_fc.h"
#include "gq_threads.h"
#include "tflite_abi.h"

#define GQ_LSTM_OP_NAME "GQ_LSTM"

/* TfLiteRegistration callbacks of a delegated GQ_LSTM node. init expects the
 * TfLiteDelegateParams of exactly one node; prepare validates the whole op
 * contract and reports through context->ReportError; invoke runs it. */
void* gq_lstm_init(TfLiteContext* context, const char* buffer, size_t length);
void gq_lstm_free(TfLiteContext* context, void* buffer);
TfLiteStatus gq_lstm_prepare(TfLiteContext* context, TfLiteNode* node);
TfLiteStatus gq_lstm_invoke(TfLiteContext* context, TfLiteNode* node);

/* Defined in gq_delegate.c: the FC kernel the delegate's `kernel` option
 * chose (never NULL for a delegate it created), and its thread pool (NULL:
 * one thread), which outlives every delegate kernel. */
const gq_fc_kernel_info* gq_delegate_kernel(const TfLiteDelegate* delegate);
gq_pool* gq_delegate_pool(const TfLiteDelegate* delegate);

#endif /* GQ_LSTM_H_ */
