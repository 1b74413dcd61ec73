"""Analysis tools: conv arithmetic, receptive fields, parameter counts, gradient flow,
attention maps."""

from cnnrnn.analysis.conv_arithmetic import (LayerInfo, conv_output_size, format_layer_table,
                                             layer_table, receptive_field, receptive_fields)
from cnnrnn.analysis.params import count_params
from cnnrnn.analysis.plots import first_conv_kernel, plot_feature_maps, plot_filters
from cnnrnn.analysis.gradient_flow import (compare_cells, hidden_state_gradient_norms,
                                           plot_gradient_norms)
from cnnrnn.analysis.attention_maps import (attention_rollout, plot_attention_heads,
                                            plot_attention_rollout, token_map)
